"""The `aetk` command line: one dispatcher, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from train.config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/kl-f4-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config key with dotted.key=value, e.g. train.max_steps=100")


def _emit(result: dict, json_path: str | None) -> int:
    """Benchmarks print JSON, and write it to --json too."""
    text = json.dumps(result, indent=1)
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.run import train

    cfg = load_config(args.config, args.overrides)
    trainer = train(cfg)
    if trainer.accelerator.is_main_process:
        print(f"run written to {trainer.run_dir}")
    trainer.close()
    return 0


def cmd_bench_train_step(args: argparse.Namespace) -> int:
    from eval.bench.train_step import bench_train_step

    cfg = load_config(args.config, args.overrides)
    return _emit(bench_train_step(cfg, steps=args.steps, warmup=args.warmup, reference=args.reference), args.json)


def cmd_bench_precision(args: argparse.Namespace) -> int:
    from eval.bench.precision import bench_precision

    cfg = load_config(args.config, args.overrides)
    return _emit(bench_precision(cfg, steps=args.steps, precisions=tuple(args.precisions.split(","))), args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aetk", description="Train, benchmark and export first-stage autoencoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML recipe",
                       description="Train from a recipe; resumes from the newest checkpoint in output_dir "
                                   "(resume=auto). Multi-process: torchrun --nproc_per_node N -m train.cli train ...")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    bench = sub.add_parser("bench", help="benchmarks", description="Benchmarks that print JSON.")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("train-step", help="steady-state training images/s of `aetk train`'s code path",
                        description="Times Trainer.step (the code path of `aetk train`) on the recipe's data "
                                    "and, with --reference, the taming-style reference loop on the same model.")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--reference", action="store_true",
                   help="also time diffusers AutoencoderKL + taming LPIPSWithDiscriminator and report the ratio")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench_train_step)

    p = bsub.add_parser("precision", help="validation PSNR after N steps in fp32 vs reduced precision",
                        description="Trains the recipe once per precision (from the same seed) and "
                                    "reports validation PSNR/SSIM and wall time of each.")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=200, help="training steps per precision (default 200)")
    p.add_argument("--precisions", default="no,bf16", help="comma-separated (default no,bf16)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_bench_precision)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "diffusers", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"aetk: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
