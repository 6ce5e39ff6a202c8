"""`aetk sample RUN --out O`: samples of a trained prior, decoded by its first stage."""

from __future__ import annotations

import argparse

from aetk.verbs import positive_float, positive_int
from train.config import ConfigError


def add(sub, name: str) -> None:
    p = sub.add_parser(name, help="sample images (or audio) from a trained prior through its first stage",
                       description="Diffusion prior: latents (seeded; DDIM, DDPM or DPM-Solver++; classifier-free "
                                   "guidance when class-conditional) decoded by the KL-VAE recorded in the run (or "
                                   "--vae; pixel-space priors need none), written as a PNG grid. AR prior: tokens "
                                   "(seeded; temperature, top-k, top-p) decoded by the VQ tokenizer -> PNG grid, or "
                                   "by the audio codec -> one WAV per sample in the --out directory.",
                       epilog="example: aetk sample runs/ldm-digits --n 20 --label 3 --out digits.png")
    p.add_argument("run", help="a diffusion_prior or ar_prior run directory, checkpoint or exported model/")
    p.add_argument("--n", type=positive_int, default=16, help="samples (default 16)")
    p.add_argument("--out", required=True, help="PNG grid path (AR prior over audio tokens: a directory for WAVs)")
    p.add_argument("--steps", type=positive_int, default=50, help="diffusion: sampler steps (default 50)")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "dpm++"], default="ddim", help="diffusion: the scheduler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, help="AR: keep the k likeliest codes at each step (0: all; default: "
                                             "the recipe's model.top_k)")
    p.add_argument("--top-p", type=float, help="AR: nucleus sampling mass (1: off; default: model.top_p)")
    p.add_argument("--temperature", type=positive_float, help="AR: softmax temperature (default: model.temperature)")
    p.add_argument("--label", help="class-conditional priors: a class index or name, or a comma-separated list "
                                   "cycled over the samples (default: every class in turn)")
    p.add_argument("--guidance", type=float, default=3.0,
                   help="diffusion: classifier-free guidance scale for class-conditional priors (1: none)")
    p.add_argument("--vae", help="first stage to decode with (default: the run's model.first_stage): a KL-VAE "
                                 "(diffusion), a VQ tokenizer or an audio codec (AR)")
    p.add_argument("--tile", type=positive_int, help="decode in exact tiles of this many pixels (bounded memory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import aetk
    from train.families import family_of, refuse_unread
    from train.families.base import SampleRequest

    model = aetk.load(args.run)
    fam = family_of(model)
    if fam.sample is None:
        raise ConfigError(f"{args.run} holds a {fam.kind} model, not a prior: aetk sample samples a diffusion or AR "
                          "prior (model.kind: diffusion_prior or ar_prior)")
    req = SampleRequest(
        out=args.out, n=args.n, seed=args.seed, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
        label=args.label, first_stage=args.vae, tile=args.tile, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature)
    refuse_unread(fam, "sample", req, args.run)
    print(fam.sample(model, req))
    return 0
