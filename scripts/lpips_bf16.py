"""How far is the LPIPS loss under bf16 autocast (how the trainer runs it with train.mixed_precision=bf16)
from fp32? Its value and its gradient on the reconstruction, at distances from a poor VAE's to a very
good one's.

Four scikit-image photos at 64 px are the targets; the "reconstructions" are the targets plus Gaussian
noise of each sigma (PSNR in the table). For each, LPIPS and d LPIPS / d x in fp32 and under bf16
autocast: the largest relative error of the value per image, and the cosine between the two gradients.
Evaluation (`aetk eval`, the trainer's validation) computes LPIPS outside autocast, in fp32.

    .venv/bin/python scripts/lpips_bf16.py                       # the fixed-seed random backbone
    .venv/bin/python scripts/lpips_bf16.py --weights vgg16.pth   # torchvision's VGG16, if you have it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers_ae.losses.perceptual import LPIPS  # noqa: E402


def photos(side: int = 64, n: int = 4) -> torch.Tensor:
    """(n, 3, side, side) in [-1, 1]: the top-left 256 px of n (at most 4) scikit-image photos, area-resized."""
    imgs = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()][:n]
    x = torch.stack([torch.from_numpy(i[:256, :256].copy()).permute(2, 0, 1).float() / 127.5 - 1 for i in imgs])
    return torch.nn.functional.interpolate(x, size=side, mode="area")


def compare(lp: LPIPS, x: torch.Tensor, y: torch.Tensor) -> dict:
    """LPIPS(y, x) and its gradient on y, in fp32 and under bf16 autocast."""
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        yy = y.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            d = lp(yy, x)
        d.sum().backward()
        out[name] = (d.detach().float(), yy.grad.clone())
    (d32, g32), (d16, g16) = out["fp32"], out["bf16"]
    mse = float(((y - x) ** 2).mean())
    return {"psnr_db": 10 * torch.log10(torch.tensor(4.0 / mse)).item(), "lpips_fp32": float(d32.mean()),
            "lpips_bf16": float(d16.mean()), "max_relative_error": float(((d16 - d32).abs() / d32).max()),
            "gradient_cosine": float(torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="a torchvision VGG16 state dict (default: the random backbone)")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.3, 0.1, 0.03, 0.01])
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    torch.manual_seed(0)
    lp = LPIPS(backbone="vgg", weights_path=args.weights) if args.weights else LPIPS(backbone="random")
    x = photos()
    rows = [{"sigma": s, **compare(lp, x, (x + s * torch.randn_like(x)).clamp(-1, 1))} for s in args.sigmas]
    print("| noise sigma | PSNR (dB) | LPIPS fp32 | LPIPS bf16 | max relative error | gradient cosine |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['sigma']:g} | {r['psnr_db']:.1f} | {r['lpips_fp32']:.4g} | {r['lpips_bf16']:.4g} | "
              f"{r['max_relative_error']:.1%} | {r['gradient_cosine']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.weights or "random", "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
