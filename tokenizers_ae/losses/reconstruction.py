"""Pixel + perceptual reconstruction loss with an optional learned log-variance (latent-diffusion)."""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_ae.losses.perceptual import LPIPS


def per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): mean over every non-batch dim, so images and audio share the code."""
    return t.mean(dim=tuple(range(1, t.ndim)))


class ReconstructionLoss(nn.Module):
    """nll = (|x - x_hat|_p + w_c * |chroma(x - x_hat)|_p + w_p * LPIPS(x_hat, x)) / exp(s) + s, averaged
    over values and batch.

    chroma(e) = e - mean_rgb(e): the colour part of the pixel error (its grey part removed), over the
    channel dim 1 of (B, 3, ...) images or folded frames. Why: from scratch, an autoencoder first learns
    the mean colour and luminance, then sits in a colour-blind saddle (a sepia output, an encoder whose
    latents barely change when the input is made grey) for thousands of steps; weighting the colour error
    gets it out within hundreds (the video recipe's README figures).
    `s` is an optional learned scalar passed in by the caller (latent-diffusion's `logvar`; it
    lives with the generator's parameters, this module holds only frozen networks).
    Returns (nll, logs).
    """

    def __init__(self, *, kind: str = "l1", perceptual: LPIPS | None = None,
                 perceptual_weight: float = 1.0, chroma_weight: float = 0.0) -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")
        if chroma_weight < 0:
            raise ValueError(f"chroma_weight must be >= 0, got {chroma_weight}")
        self.kind = kind
        self.perceptual = perceptual if perceptual_weight > 0 else None
        self.perceptual_weight = perceptual_weight
        self.chroma_weight = chroma_weight

    def forward(self, recon: torch.Tensor, x: torch.Tensor, logvar: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        diff = recon.float() - x.float()
        pix = per_sample_mean(diff.abs() if self.kind == "l1" else diff.pow(2))  # (B,)
        rec = pix
        logs = {f"rec/{self.kind}": pix.detach().mean()}
        if self.chroma_weight > 0:
            if diff.ndim < 4 or diff.shape[1] != 3:
                raise ValueError(f"chroma_weight needs RGB images (B, 3, H, W), got shape {tuple(diff.shape)}")
            c = diff - diff.mean(dim=1, keepdim=True)
            chroma = per_sample_mean(c.abs() if self.kind == "l1" else c.pow(2))
            rec = rec + self.chroma_weight * chroma
            logs["rec/chroma"] = chroma.detach().mean()
        if self.perceptual is not None:
            p = self.perceptual(recon, x).float()  # (B,)
            rec = rec + self.perceptual_weight * p
            logs[f"rec/{getattr(self.perceptual, 'log_name', 'lpips')}"] = p.detach().mean()
        if logvar is not None:
            nll = rec / torch.exp(logvar) + logvar
            logs["rec/logvar"] = logvar.detach()
        else:
            nll = rec
        return nll.mean(), logs
