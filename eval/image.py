"""Image reconstruction metrics (torchmetrics; piq's weight-free perceptual ones) and reconstruction grids."""

from __future__ import annotations

from pathlib import Path

import piq
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchvision.utils import make_grid, save_image

from tokenizers_ae.losses.perceptual import ms_ssim_betas

WEIGHT_FREE = {
    # name: (piq function, smallest image side piq accepts, what it measures)
    "haarpsi": (piq.haarpsi, 16, "HaarPSI, higher is better (0-1)"),
    "ms_gmsd": (piq.multi_scale_gmsd, 17, "multi-scale gradient magnitude similarity deviation, lower is better"),
    "fsim": (piq.fsim, 16, "feature similarity (phase congruency + gradient), higher is better (0-1)"),
    "vif": (piq.vif_p, 41, "visual information fidelity (pixel domain), higher is better"),
}
"""Perceptual metrics that need no downloaded weights (piq), reported beside PSNR/SSIM/MS-SSIM."""


def weight_free_unavailable(side: int) -> dict[str, str]:
    """The weight-free metrics images of this side are too small for, each with why."""
    return {k: f"unavailable: needs images of at least {m} px (piq), these are {side}"
            for k, (_, m, _) in WEIGHT_FREE.items() if side < m}


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32."""
    return ((x.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def psnr(x: torch.Tensor, recon: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of (B, C, H, W) images in [-1, 1] (alone: rate-distortion curves need
    only this, not the perceptual metrics)."""
    return float(peak_signal_noise_ratio(to_unit(recon), to_unit(x), data_range=1.0, dim=(1, 2, 3),
                                         reduction="elementwise_mean"))


@torch.no_grad()
def reconstruction_metrics(x: torch.Tensor, recon: torch.Tensor, lpips=None) -> dict[str, float]:
    """PSNR (dB), SSIM, MS-SSIM (scales the size allows) and the weight-free perceptual metrics of
    `WEIGHT_FREE` that the size allows, on [0, 1] images; LPIPS when a pretrained LPIPS module is given.

    x, recon: (B, 3, H, W) in [-1, 1].
    """
    a, b = to_unit(recon), to_unit(x)
    out = {
        "psnr": psnr(x, recon),
        "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
    }
    # MS-SSIM needs side > 10 * 2^(scales-1): small images get fewer scales (renormalised weights).
    betas = ms_ssim_betas(min(a.shape[-2:]))
    if betas:
        out["ms_ssim"] = float(multiscale_structural_similarity_index_measure(a, b, data_range=1.0, betas=betas))
        out["ms_ssim_scales"] = len(betas)
    side = min(a.shape[-2:])
    finite = bool(torch.isfinite(a).all())  # piq asserts on NaN: a diverged model's metrics are NaN, not a crash
    for name, (fn, smallest, _) in WEIGHT_FREE.items():
        if side >= smallest:
            out[name] = float(fn(a, b, data_range=1.0)) if finite else float("nan")
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


def save_comparison_figure(x: torch.Tensor, recons: dict[str, torch.Tensor], path: str | Path, n: int = 6,
                           error_gain: float = 4.0) -> Path:
    """A figure people can see: for `n` images spread evenly over x (a folder's first images are often
    crops of one photo), one row each, the original, then every reconstruction in `recons` (label ->
    (B, 3, H, W) in [-1, 1]) and its error map (|recon - x| averaged over colour, x `error_gain`,
    brighter is worse), drawn large with labelled columns. PNG at `path`."""
    import matplotlib  # matplotlib: heavy, only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    n = min(n, x.shape[0])
    pick = torch.linspace(0, x.shape[0] - 1, n).round().long()
    x, recons = x[pick], {k: r[pick] for k, r in recons.items()}
    cols = [("original", to_unit(x[:n]).permute(0, 2, 3, 1).numpy(), None)]
    for label, r in recons.items():
        cols.append((label, to_unit(r[:n]).permute(0, 2, 3, 1).numpy(), None))
    for label, r in recons.items():
        err = ((r[:n].float() - x[:n].float()).abs().mean(1) / 2 * error_gain).clamp(0, 1).numpy()
        cols.append((f"error: {label}", err, "magma"))
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n), squeeze=False)
    for j, (label, imgs, cmap) in enumerate(cols):
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[i], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
