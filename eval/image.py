"""Image reconstruction metrics (torchmetrics) and reconstruction grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchvision.utils import make_grid, save_image

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


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
    # MS-SSIM needs side > 10 * 2^(scales-1): small images get fewer scales (renormalised weights).
    scales = max(1, min(5, int(math.log2(min(a.shape[-2:]) / 10)) + 1))
    if scales >= 2:
        betas = MS_SSIM_BETAS[:scales]
        betas = tuple(bt / sum(betas) for bt in betas)
        out["ms_ssim"] = float(multiscale_structural_similarity_index_measure(a, b, data_range=1.0, betas=betas))
        out["ms_ssim_scales"] = scales
    if lpips is not None:
        out["lpips"] = float(lpips(recon.float(), x.float()).mean())
    return out


def save_reconstruction_grid(x: torch.Tensor, *recons: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Groups of rows, originals above each reconstruction (same order as `recons`), as one PNG."""
    tensors = [to_unit(t.cpu()) for t in (x, *recons)]
    rows = []
    for i in range(0, x.shape[0], nrow):
        rows += [t[i:i + nrow] for t in tensors]
    grid = make_grid(torch.cat(rows), nrow=min(nrow, x.shape[0]), padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path
