"""`aetk import FILE --out DIR`: an SD / latent-diffusion single-file VAE as a diffusers directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="turn an SD / latent-diffusion single-file VAE into a diffusers directory",
                       description="Reads a .safetensors file with latent-diffusion key names (first_stage_model. "
                                   "prefixes accepted) and writes a diffusers AutoencoderKL directory to fine-tune "
                                   "(model.init_from).",
                       epilog="example: aetk import sd-vae.safetensors --out sd-vae --config configs/sd-vae-config")
    p.add_argument("file", help="FILE.safetensors")
    p.add_argument("--out", required=True, help="the diffusers directory to write")
    p.add_argument("--config", help="diffusers AutoencoderKL directory or config.json giving the architecture "
                                    "(not needed for files aetk wrote)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokenizers_ae.export.sd_single_file import load_sd_single_file
    from tokenizers_ae.models.kl_vae import KLVAE

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    out = KLVAE(load_sd_single_file(args.file, config=args.config)).save_pretrained(args.out)
    print(f"wrote a diffusers AutoencoderKL to {out}; fine-tune it with model.init_from={out}")
    return 0
