"""Are a class-conditional video prior's samples the digits they were asked for?

A person judges a grid; this script gives the number beside it. It trains a small CNN (no downloaded
weights) on frames of one-digit Moving MNIST clips from the training split (`builtin:moving-mnist`, the
digit at any position), then reports the share of clips it classifies as their class (frame logits
averaged over the clip) for:

- held-out real clips (validation digits the classifier never saw): the classifier's own ceiling;
- the first stage's reconstructions of those clips: what the VAE keeps legible;
- the prior's samples, `--n` of them with the classes in turn: what the prior makes legible.

    .venv/bin/python scripts/digit_legibility.py runs/video-prior-digits --n 100 --json legibility.json

Chance is 10%. Run it alone on 2 cores (about 2 minutes at the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aetk  # noqa: E402
from latent_diffusion.diffusion_prior import DiffusionPrior  # noqa: E402
from latent_diffusion.diffusion_prior import sample as sample_latents  # noqa: E402
from latent_diffusion.sampling import decode_latents, sample_labels  # noqa: E402
from tokenizers_ae.data.video import MovingDigits  # noqa: E402
from train.config import ConfigError  # noqa: E402
from train.families.diffusion_prior import load_first_stage  # noqa: E402


class DigitCNN(nn.Module):
    """(B, 1, H, W) grey frames in [-1, 1] -> (B, 10) logits; the global max pool makes it indifferent to
    where the digit is."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))


def clips(split: str, n: int, frames: int, resolution: int, source: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, T, R, R) one-digit clips of `source` (mnist: builtin:moving-mnist, digits: builtin:moving-digits)
    and their (n,) classes."""
    ds = MovingDigits(split=split, frames=frames, resolution=resolution, size=n, digits=1, source=source)
    items = [ds[i] for i in range(n)]
    return torch.stack([it["x"] for it in items]), torch.tensor([it["y"] for it in items])


def train_classifier(frames: int, resolution: int, n_clips: int, epochs: int, seed: int,
                     source: str = "mnist") -> DigitCNN:
    x, y = clips("train", n_clips, frames, resolution, source)
    x = x[:, 0].flatten(0, 1)[:, None]  # (n*T, 1, R, R): every frame, grey
    y = y.repeat_interleave(frames)
    torch.manual_seed(seed)
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = order[i:i + 128]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"classifier epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return net.eval()


@torch.no_grad()
def clip_accuracy(net: DigitCNN, videos: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of (n, C, T, H, W) clips whose frame-averaged logits pick `labels` (n,)."""
    n, c, t, h, w = videos.shape
    grey = videos.float().mean(dim=1).reshape(n * t, 1, h, w)  # the samples' colour is not the question
    logits = torch.cat([net(grey[i:i + 512]) for i in range(0, len(grey), 512)]).reshape(n, t, 10).mean(dim=1)
    return float((logits.argmax(dim=1) == labels).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prior", help="a trained video diffusion prior (its run or model directory)")
    p.add_argument("--n", type=int, default=100, help="samples, classes in turn (100)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per sample (25)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance (3, as aetk sample)")
    p.add_argument("--train-clips", type=int, default=4096, help="clips whose frames train the classifier (4096)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--source", choices=["mnist", "digits"], default="mnist",
                   help="the digits the prior's clips were made of: mnist (builtin:moving-mnist, the recipe's) or "
                        "digits (builtin:moving-digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)

    try:
        prior = aetk.load(args.prior).eval()
    except ValueError as e:  # LoadError: a missing path, or not an aetk model
        raise SystemExit(str(e)) from None
    if not isinstance(prior, DiffusionPrior):
        raise SystemExit(f"{args.prior} holds a {type(prior).__name__}, not a diffusion prior")
    if prior.space != "latent" or len(prior.latent_shape) != 4 or prior.num_classes != 10:
        raise SystemExit(f"{args.prior}: need a class-conditional (10 classes) video latent prior, got "
                         f"space {prior.space}, latent shape {prior.latent_shape}, {prior.num_classes} classes")
    try:
        vae = load_first_stage(prior.first_stage, video=True).eval()
    except ConfigError as e:
        raise SystemExit(f"{args.prior}: {e}") from None
    frames = 1 + (prior.latent_shape[1] - 1) * vae.temporal_factor
    resolution = prior.latent_shape[2] * vae.spatial_factor
    t0 = time.perf_counter()
    net = train_classifier(frames, resolution, args.train_clips, args.epochs, args.seed, args.source)
    real, real_y = clips("val", args.n, frames, resolution, args.source)
    with torch.no_grad():
        recon = torch.cat([vae.reconstruct(real[i:i + 16]) for i in range(0, len(real), 16)])
    labels = sample_labels(args.n, 10, None)
    z = sample_latents(prior, n=args.n, seed=args.seed, steps=args.steps, labels=labels, guidance=args.guidance,
                       progress=True)
    samples = decode_latents(vae, z, prior.scaling_factor, shift_factor=prior.shift_factor)
    result = {"prior": args.prior, "source": args.source, "n": args.n, "frames": frames, "resolution": resolution,
              "steps": args.steps,
              "guidance": args.guidance, "chance": 0.1,
              "real_heldout": clip_accuracy(net, real, real_y),
              "first_stage_reconstructions": clip_accuracy(net, recon, real_y),
              "prior_samples": clip_accuracy(net, samples, labels),
              "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
