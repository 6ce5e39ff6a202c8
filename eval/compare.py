"""Latent compatibility of a fine-tuned autoencoder with the one it came from (`aetk eval --compare`).

A user who fine-tuned a released VAE needs to know whether the diffusion models trained on the original's
latents still work with it. Two measurements answer that:
  * latent drift: the fine-tuned encoder's posterior means against the original's on the same images, as
    a relative error per channel (||mu' - mu||_2 / ||mu||_2 over every position): 0 when the encoder
    was frozen (`train.trainable=decoder`);
  * decoding the original's latents: both decoders on the original encoder's means (what a prior trained
    on the original samples), with reconstruction metrics against the images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from eval.image import reconstruction_metrics, save_comparison_figure


@torch.no_grad()
def latent_compatibility(tuned, original, batches: Iterable[torch.Tensor], figure: str | Path | None = None) -> dict:
    """`tuned`, `original`: models with `encode_moments(x) -> (mean, logvar)` and `decode(z)` of the same
    latent layout; `batches`: (B, C, H, W) images in [-1, 1]. Returns {"latent_drift": {...},
    "original_latents": {"original_decoder": metrics, "tuned_decoder": metrics}}; with `figure`, also
    a PNG there of images spread over the set: original, both decoders on the original's latents, their
    errors."""
    diff_sq = ref_sq = None
    max_abs, xs, orig_recons, tuned_recons = 0.0, [], [], []
    for x in batches:
        mu_o, _ = original.encode_moments(x)
        mu_t, _ = tuned.encode_moments(x)
        if mu_o.shape != mu_t.shape:
            raise ValueError(f"the two models' latents differ in shape ({tuple(mu_t.shape[1:])} vs "
                             f"{tuple(mu_o.shape[1:])}): --compare needs a model fine-tuned from ORIGINAL")
        dims = [0, *range(2, mu_o.ndim)]
        d, r = (mu_t - mu_o).double().pow(2).sum(dims), mu_o.double().pow(2).sum(dims)
        diff_sq, ref_sq = (d, r) if diff_sq is None else (diff_sq + d, ref_sq + r)
        max_abs = max(max_abs, (mu_t - mu_o).abs().max().item())
        xs.append(x.float().cpu())
        orig_recons.append(original.decode(mu_o).float().clamp(-1, 1).cpu())
        tuned_recons.append(tuned.decode(mu_o).float().clamp(-1, 1).cpu())
    if diff_sq is None:
        raise ValueError("--compare: no images to compare on")
    per_channel = (diff_sq / ref_sq.clamp_min(1e-30)).sqrt()
    x = torch.cat(xs)
    files = {}
    if figure is not None:
        files["figure"] = str(save_comparison_figure(
            x, {"original decoder": torch.cat(orig_recons), "tuned decoder": torch.cat(tuned_recons)}, figure))
    return {
        "latent_drift": {"relative_per_channel": per_channel.tolist(),
                         "relative": float((diff_sq.sum() / ref_sq.sum().clamp_min(1e-30)).sqrt()),
                         "max_abs": max_abs, "identical": max_abs == 0.0},
        "original_latents": {"original_decoder": reconstruction_metrics(x, torch.cat(orig_recons)),
                             "tuned_decoder": reconstruction_metrics(x, torch.cat(tuned_recons))},
        "n": int(x.shape[0]), **files,
    }
