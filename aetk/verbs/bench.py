"""`aetk bench ...`: the benchmarks behind the README's speed figures, each printing JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aetk.verbs import add_config_args, add_json, emit, positive_int


def add(sub, name: str) -> None:
    bench = sub.add_parser(name, help="benchmarks", description="Benchmarks that print JSON, each with the "
                           "reference it is measured against.",
                           epilog="example: aetk bench train-step configs/bench-kl-64.yaml --reference --json t.json")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("train-step", help="steady-state training images/s of `aetk train`'s code path",
                        description="Times Trainer.step (the code path of `aetk train`) on the recipe's data "
                                    "and, with --reference, the taming-style reference loop on the same model.")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--reference", action="store_true",
                   help="also time diffusers AutoencoderKL + taming LPIPSWithDiscriminator and report the ratio")
    add_json(p)
    p.set_defaults(func=run_train_step)

    p = bsub.add_parser("precision", help="validation PSNR after N steps in fp32 vs reduced precision",
                        description="Trains the recipe once per precision (from the same seed) and "
                                    "reports validation PSNR/SSIM and wall time of each.")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=200, help="training steps per precision (default 200)")
    p.add_argument("--precisions", default="no,bf16", help="comma-separated (default no,bf16)")
    add_json(p)
    p.set_defaults(func=run_precision)

    p = bsub.add_parser("encode", help="`aetk encode` vs a plain diffusers encode loop: images/s, error, memory",
                        description="Times `aetk encode` (fp32 and bf16) and a plain diffusers loop (PIL decode, "
                                    "AutoencoderKL.encode fp32, batch 8) on the same PNG folder, each in a fresh "
                                    "process; reports images/s, latent error vs fp32 and peak RSS.")
    p.add_argument("model", help="a KL-VAE: run dir, checkpoint, diffusers AutoencoderKL dir or SD single file")
    p.add_argument("--data", help="PNG/JPEG folder (default: write N crops of the built-in photos)")
    p.add_argument("--resolution", type=int, default=256, help="crop size of the images (default 256)")
    p.add_argument("--n", type=int, default=128, help="images in the default folder")
    add_json(p)
    p.set_defaults(func=run_encode)

    p = bsub.add_parser("quantizer", help="VectorQuantizer (EMA) vs vector_quantize_pytorch: vectors/s, memory",
                        description="Forward + backward training steps of aetk's VectorQuantizer and, when "
                                    "vector-quantize-pytorch is installed, its VectorQuantize (same codebook size, "
                                    "dim, EMA decay, commitment weight), each in a fresh process.")
    p.add_argument("--codebook-size", type=int, default=16384, help="codes (default 16384)")
    p.add_argument("--dim", type=int, default=8, help="code dimension (default 8)")
    p.add_argument("--n-vectors", type=int, default=16384, help="vectors per step (default 16384)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--no-reference", action="store_true", help="time aetk only")
    add_json(p)
    p.set_defaults(func=run_quantizer)

    p = bsub.add_parser("tiling", help="VAE decode/encode of large images: untiled vs aetk --tile vs diffusers tiling",
                        description="Time, peak memory and max abs error against untiled, each in a fresh process, "
                                    "for the kl-f8 (Stable Diffusion VAE) architecture with random weights.")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sides (default 512 1024)")
    p.add_argument("--tile", type=int, default=256, help="tile side, pixels (default 256)")
    p.add_argument("--ops", nargs="+", choices=["decode", "encode"], default=["decode", "encode"],
                   help="what to time (default both)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_json(p)
    p.set_defaults(func=run_tiling)

    p = bsub.add_parser("upcast", help="a VAE decoder that overflows fp16: whole-model fp32 upcast vs --precision auto",
                        description="Decode with the kl-f8 (Stable Diffusion VAE) architecture, random weights, one "
                                    "decoder conv scaled past fp16's range: the whole VAE in fp32 (diffusers' "
                                    "force_upcast), fp16 with only the overflowing modules in fp32 (auto), and plain "
                                    "fp16 (not finite; timed for scale). Seconds, error against fp32, the plan.")
    p.add_argument("--size", type=int, default=256, help="image side, pixels (default 256)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed decodes per way (median; default 3)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_json(p)
    p.set_defaults(func=run_upcast)

    p = bsub.add_parser("video", help="video VAE encode/decode: aetk's VideoVAE vs diffusers' AutoencoderKLWan tiling",
                        description="Encode and decode of one clip with a Wan-2.1-shaped video VAE (random seeded "
                                    "weights): diffusers' AutoencoderKLWan untiled (the reference) and with "
                                    "enable_tiling() + enable_slicing(), and aetk's VideoVAE on the same weights. "
                                    "Each measurement runs in a fresh process; reports seconds, peak memory and max "
                                    "abs error against the reference, and the aetk/diffusers-tiled ratios.",
                        epilog="example: aetk bench video --frames 33 --size 256 --base-dim 32 --json video.json")
    p.add_argument("--frames", type=positive_int, default=33, help="frames per clip, 1 + 4k (default 33)")
    p.add_argument("--size", type=positive_int, default=256, help="frame side, pixels, a multiple of 8 (default 256)")
    p.add_argument("--base-dim", "--width", dest="base_dim", type=positive_int, default=96,
                   help="the VAE's base width (default 96, Wan 2.1's; e.g. 32 on a CPU)")
    p.add_argument("--batch", type=positive_int, default=1, help="clips per call (default 1)")
    p.add_argument("--tile", type=positive_int,
                   help="diffusers' tile side in pixels, stride 3/4 of it (default: its own, 256 with stride 192, "
                        "which tiles only frames larger than 256)")
    p.add_argument("--ops", nargs="+", choices=["encode", "decode"], default=["encode", "decode"],
                   help="what to time (default both)")
    p.add_argument("--no-timing-run", action="store_true",
                   help="take seconds from the memory run (mmap threshold 64 KiB) instead of a second process")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    add_json(p)
    p.set_defaults(func=run_video)

    p = bsub.add_parser("codec", help="audio codec encode+decode speed vs transformers' EncodecModel (24 kHz, 6 kbps)",
                        description="Real-time factors of EncodecModel (default config, random weights; also with "
                                    "weight norm folded) and aetk's SoundStream (whole file and streaming chunks), "
                                    "alternating in one run; medians. Run on a quiet machine.")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of audio per call (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls, medians reported (default 3)")
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both",
                   help="compute precision (default both)")
    p.add_argument("--kbps", type=float, default=6.0, help="bitrate: the levels used (default 6)")
    p.add_argument("--arch", choices=["fast", "encodec"], default="fast",
                   help="ours: the fast architecture (configs/soundstream-24k.yaml) or EnCodec's own widths")
    p.add_argument("--chunk-ms", type=float, nargs="+", default=[20, 80, 320, 640, 1280, 2560],
                   help="streaming chunk lengths, ms")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    add_json(p)
    p.set_defaults(func=run_codec)

    p = bsub.add_parser("prior", help="latent vs pixel-space diffusion cost, and aetk's sampler vs diffusers' pipeline",
                        description="Training step and sampling time of the same UNet over KL latents (f-times "
                                    "smaller, random VAE) and over pixels, on the same photos; and aetk's sample + "
                                    "decode against diffusers' LDMPipeline with the same UNet and DDIM scheduler. "
                                    "Variants alternate; medians.")
    p.add_argument("--resolution", type=int, default=64, help="image side, pixels (default 64)")
    p.add_argument("--factor", type=int, default=8, help="VAE downsampling factor (latent side = resolution / f)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128], help="UNet block_out_channels")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--n", type=int, default=8, help="samples per sampling call")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, medians reported (default 3)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="compute precision (default fp32)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    add_json(p)
    p.set_defaults(func=run_prior)

    p = bsub.add_parser("quality", help="held-out PSNR / MS-SSIM / HaarPSI per training minute: aetk vs the "
                        "latent-diffusion or taming VQGAN loop, beside patch PCA",
                        description="Trains a KL-VAE recipe with aetk's trainer and with latent-diffusion's loop "
                                    "(eval/bench/reference_taming.py, its kl-f4 hyper-parameters), or a VQ / FSQ "
                                    "recipe against taming's VQGAN loop (eval/bench/reference_vqgan.py), on the "
                                    "same data, architecture, initial weights and wall-clock budget; evaluates "
                                    "both on the recipe's data.val_path as training goes (the clock stops "
                                    "meanwhile) and writes quality.png and quality.json to --out. A decaying "
                                    "learning-rate schedule (wsd, cosine, linear) is first fitted to the budget "
                                    "by a short timed probe (a wsd race re-fits it every 100 steps of its "
                                    "plateau); an interrupted race keeps its finished side in "
                                    "quality.partial.json. Run it alone.",
                        epilog="example: aetk bench quality configs/photo-kl-f4-64.yaml --minutes 30")
    add_config_args(p)
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget of each side (default 30)")
    p.add_argument("--evals", type=positive_int, default=6, help="evaluations per side after step 0 (default 6)")
    p.add_argument("--val-n", type=positive_int, default=256, help="held-out images scored (default 256)")
    p.add_argument("--fit-n", type=positive_int, default=1024, help="training images PCA is fitted on (default 1024)")
    p.add_argument("--only", choices=["aetk", "reference"], help="run one side only (no targets, no figure)")
    p.add_argument("--out", default="runs/bench-quality", help="figure and JSON go here (default runs/bench-quality)")
    p.set_defaults(func=run_quality)

    p = bsub.add_parser("classic", help="train + evaluate every classic autoencoder recipe: one table, one figure",
                        description="Trains each recipe in configs/classic through `aetk train`'s code path, "
                                    "evaluates it as `aetk eval` does (held-out MSE/PSNR, PCA with the same code "
                                    "size, ELBO, sparsity, denoising gain, inpainting, anomaly AUC, SAE dead "
                                    "latents) and writes table.md, figure.png and results.json to --out.")
    p.add_argument("--recipes", default="configs/classic", help="directory of recipes (default configs/classic)")
    p.add_argument("--out", default="runs/bench-classic", help="run directories, table and figure go here")
    p.add_argument("--steps", type=int, help="train every recipe this many steps (default: each recipe's own)")
    p.add_argument("--only", help="comma-separated recipe names, e.g. vae,beta-vae")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the models are tiny)")
    add_json(p)
    p.set_defaults(func=run_classic)


def run_train_step(args: argparse.Namespace) -> int:
    from eval.bench.train_step import bench_train_step
    from train.recipe import load_config

    cfg = load_config(args.config, args.overrides)
    return emit(bench_train_step(cfg, steps=args.steps, warmup=args.warmup, reference=args.reference), args.json)


def run_precision(args: argparse.Namespace) -> int:
    from eval.bench.precision import bench_precision
    from train.recipe import load_config

    cfg = load_config(args.config, args.overrides)
    return emit(bench_precision(cfg, steps=args.steps, precisions=tuple(args.precisions.split(","))), args.json)


def run_encode(args: argparse.Namespace) -> int:
    from eval.bench.encode import bench_encode

    return emit(bench_encode(args.model, args.data, resolution=args.resolution, n=args.n), args.json)


def run_quantizer(args: argparse.Namespace) -> int:
    from eval.bench.quantizer import bench_quantizer

    return emit(bench_quantizer(codebook_size=args.codebook_size, dim=args.dim, n_vectors=args.n_vectors,
                                 steps=args.steps, reference=not args.no_reference), args.json)


def run_tiling(args: argparse.Namespace) -> int:
    from eval.bench.tiling import bench_tiling

    return emit(bench_tiling(sizes=tuple(args.sizes), tile=args.tile, ops=tuple(args.ops), threads=args.threads),
                 args.json)


def run_upcast(args: argparse.Namespace) -> int:
    from eval.bench.upcast import bench_upcast

    return emit(bench_upcast(size=args.size, batch=args.batch, repeats=args.repeats, device=args.device,
                             threads=args.threads), args.json)


def run_video(args: argparse.Namespace) -> int:
    from eval.bench.video import WAN21, bench_video

    return emit(bench_video(frames=args.frames, size=args.size, batch=args.batch,
                            arch={**WAN21, "base_dim": args.base_dim}, ops=tuple(args.ops), tile=args.tile,
                            threads=args.threads, timing_run=not args.no_timing_run), args.json)


def run_codec(args: argparse.Namespace) -> int:
    from eval.bench.codec import bench_codec

    return emit(bench_codec(seconds=args.seconds, repeats=args.repeats, precision=args.precision, kbps=args.kbps,
                             arch=args.arch, chunk_ms=tuple(args.chunk_ms), threads=args.threads), args.json)


def run_prior(args: argparse.Namespace) -> int:
    from eval.bench.prior import bench_prior

    return emit(bench_prior(resolution=args.resolution, factor=args.factor, widths=tuple(args.widths),
                             batch=args.batch, n=args.n, sample_steps=args.sample_steps, repeats=args.repeats,
                             precision=args.precision, threads=args.threads), args.json)


def run_classic(args: argparse.Namespace) -> int:
    from eval.bench.classic import bench_classic

    res = bench_classic(recipes=args.recipes, out=args.out, steps=args.steps,
                        only=args.only.split(",") if args.only else None, threads=args.threads)
    print(res["table"])
    print(f"table, figure and results in {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def run_quality(args: argparse.Namespace) -> int:
    from eval.bench.quality import bench_quality
    from train.recipe import load_config

    if not args.minutes > 0:
        raise ValueError(f"--minutes {args.minutes}: must be positive")
    cfg = load_config(args.config, args.overrides)
    only = (args.only,) if args.only else ("aetk", "reference")
    res = bench_quality(cfg, budget_s=60 * args.minutes, evals=args.evals, val_n=args.val_n, fit_n=args.fit_n,
                        out_dir=args.out, only=only)
    return emit(res, str(Path(args.out) / "quality.json"))
