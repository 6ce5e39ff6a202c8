"""`aetk export SOURCE --out OUT [--format F]`: a trained model in a format other tools load."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from aetk.verbs import positive_int
from train.config import ConfigError


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="write a model where the ecosystem reads it (diffusers, SD single file, "
                                  "transformers EncodecModel)",
                       description="SOURCE: a run directory (newest checkpoint), a checkpoint, an exported model "
                                   "directory or an SD single file. Formats by family: KL-VAE: diffusers (default), "
                                   "sd-single-file; VQ tokenizer: diffusers (a VQModel, or aetk's native format when "
                                   "no VQModel holds the quantizer); audio codec: encodec (default), aetk.",
                       epilog="examples:\n  aetk export runs/quickstart --out vae-diffusers --data builtin:skimage\n"
                              "  aetk export runs/quickstart --format sd-single-file --out vae.safetensors\n"
                              "  aetk export runs/codec-tiny --out codec-encodec\n"
                              "  aetk export runs/finetune-decoder --out vae --push-to-hub me/my-vae\n"
                              "  aetk eval runs/quickstart --data /my/val --json val.json && \\\n"
                              "    aetk export runs/quickstart --out vae --eval val.json  # figures in the card",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="run dir, checkpoint, exported model dir or SD single file")
    p.add_argument("--format", choices=["diffusers", "sd-single-file", "encodec", "aetk"],
                   help="output format (default: the family's first; see above)")
    p.add_argument("--out", required=True, help="a directory, or FILE.safetensors for sd-single-file")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="checkpoint weights to export")
    p.add_argument("--scaling-factor", type=float, help="KL-VAE: set the latent scaling factor explicitly")
    p.add_argument("--data", help="KL-VAE: measure the scaling factor (1/std of latents) on these images")
    p.add_argument("--resolution", type=positive_int, default=256, help="crop size for --data (default 256)")
    p.add_argument("--n", type=positive_int, default=256, help="images used by --data (default 256)")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME",
                   help="then upload the export (with its model card) to this Hub model repo, created if missing; "
                        "needs network and a token (hf auth login or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--eval", action="append", default=[], metavar="EVAL.json",
                   help="an `aetk eval --json` output of the same weights (checked by hash): its figures, protocol "
                        "card and the command that repeats it go into the model card, the file into "
                        "OUT/evaluations/ (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import aetk
    from train.families import family_of, refuse_unread
    from train.families.base import ExportRequest

    if args.push_to_hub:
        from aetk.hub import check_repo_id

        check_repo_id(args.push_to_hub)  # before the export's work, not after it
    model = aetk.load(args.source, weights=args.weights)
    fam = family_of(model)
    if not fam.exports:
        raise ConfigError(f"{args.source} holds a {fam.kind} model: training writes it to its run's model/ "
                          "directory, and aetk export has no other format for it")
    fmt = args.format or next(iter(fam.exports))
    if fmt not in fam.exports:
        raise ConfigError(f"--format {fmt} is not a format of a {fam.kind} model ({args.source}); use "
                          f"{' or '.join(fam.exports)}")
    req = ExportRequest(out=args.out, data=args.data, resolution=args.resolution, n=args.n,
                        scaling_factor=args.scaling_factor)
    refuse_unread(fam, "export", req, args.source)
    evaluations = held_out(args, model, fmt)  # checked before anything is written
    print(fam.exports[fmt](model, req))
    out = Path(args.out)
    from train.model_card import is_export, write_model_card

    if is_export(out):  # a directory export: the card the Hub renders beside it
        measured = Path(args.source) / "latent_stats.json"
        if measured.is_file() and not (out / "latent_stats.json").exists() and not (args.data or args.scaling_factor):
            shutil.copyfile(measured, out / "latent_stats.json")  # the source's factors, kept unchanged

        for name, result in evaluations.items():
            (out / "evaluations").mkdir(exist_ok=True)
            (out / "evaluations" / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        run_dir = Path(args.source) if (Path(args.source) / "config.yaml").is_file() else None
        write_model_card(out, run_dir=run_dir, evaluations=evaluations)
    if args.push_to_hub:
        from aetk.hub import push_export

        print(f"uploaded to {push_export(out, args.push_to_hub, private=args.private)}")
    return 0


def held_out(args: argparse.Namespace, model, fmt: str) -> dict[str, dict]:
    """--eval files by name (their stem), each checked to hold a protocol card and to have measured
    exactly the weights being exported."""
    from eval.protocol import load_evaluation, weights_sha256

    if args.eval and fmt == "sd-single-file":
        raise ConfigError("--eval: an sd-single-file export is one file with no model card; export a directory "
                          "(--format diffusers) to carry the figures")
    out: dict[str, dict] = {}
    digest = weights_sha256(model) if args.eval else ""  # once: a large VAE takes a second to hash
    for path in args.eval:
        name = Path(path).stem
        if name in out:
            raise ConfigError(f"--eval {path}: another --eval file is also named {name}.json; rename one")
        out[name] = load_evaluation(path, digest, args.source)
    return out
