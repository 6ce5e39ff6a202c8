"""`aetk export SOURCE --out OUT [--format F]`: a trained model in a format other tools load."""

from __future__ import annotations

import argparse
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
                              "  aetk export runs/finetune-decoder --out vae --push-to-hub me/my-vae",
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
    print(fam.exports[fmt](model, req))
    out = Path(args.out)
    if (out / "config.json").is_file():  # a directory export: the card the Hub renders beside it
        from train.model_card import write_model_card

        run_dir = Path(args.source) if (Path(args.source) / "config.yaml").is_file() else None
        write_model_card(out, run_dir=run_dir)
    if args.push_to_hub:
        from aetk.hub import push_export

        print(f"uploaded to {push_export(out, args.push_to_hub, private=args.private)}")
    return 0
