"""Image reconstruction metrics (torchmetrics) and reconstruction grids."""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.utils import make_grid, save_image


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32."""
    return ((x.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def reconstruction_metrics(x: torch.Tensor, recon: torch.Tensor, lpips=None) -> dict[str, float]:
    """PSNR (dB) and SSIM on [0, 1] images, LPIPS when a pretrained LPIPS module is given.

    x, recon: (B, 3, H, W) in [-1, 1].
    """
    a, b = to_unit(recon), to_unit(x)
    out = {
        "psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")),
        "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
    }
    if lpips is not None:
        out["lpips"] = float(lpips(recon.float(), x.float()).mean())
    return out


def save_reconstruction_grid(x: torch.Tensor, recon: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Pairs of rows, originals above reconstructions, as one PNG."""
    x, recon = to_unit(x.cpu()), to_unit(recon.cpu())
    rows = []
    for i in range(0, x.shape[0], nrow):
        rows += [x[i:i + nrow], recon[i:i + nrow]]
    grid = make_grid(torch.cat(rows), nrow=min(nrow, x.shape[0]), padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path
