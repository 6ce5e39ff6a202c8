"""Latent statistics of a KL autoencoder, and the diffusion scaling factor derived from them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL

from tokenizers_ae.data.sources import build_image_dataset


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, batches: Iterable[torch.Tensor], *, seed: int = 0) -> dict:
    """Encode `batches` ((B, C, H, W) in [-1, 1]) and summarise posterior samples z ~ q(z|x).

    The scaling factor is 1 / std(z) over every value, as latent-diffusion derived Stable
    Diffusion's 0.18215 (from samples, not means); per-channel mean/std are what diffusers stores
    as `latents_mean` / `latents_std`.
    """
    g = torch.Generator().manual_seed(seed)
    was_training = vae.training
    vae.eval()
    zs = []
    for x in batches:
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=g).to(post.mean)
        zs.append((post.mean + post.std * eps).float().cpu())
    vae.train(was_training)
    if not zs:
        raise ValueError("latent_statistics needs at least one batch")
    z = torch.cat(zs)  # (N, c, h, w)
    dims = [0, *range(2, z.ndim)]
    std = z.std(correction=0).item()
    return {"n": z.shape[0], "latent_shape": list(z.shape[1:]),
            "mean": z.mean(dims).tolist(), "std": z.std(dims, correction=0).tolist(),
            "global_mean": z.mean().item(), "global_std": std, "scaling_factor": 1.0 / std}


def set_scaling_factor(vae: AutoencoderKL, scaling_factor: float) -> None:
    """Record the factor in the vae's config (what diffusers pipelines multiply latents by).

    Per-channel `latents_mean`/`latents_std` are deliberately not written: SDXL-style pipelines
    switch to a different latent normalisation when they are present.
    """
    vae.register_to_config(scaling_factor=float(scaling_factor))


def set_latent_norm(vae: AutoencoderKL, stats: dict, norm: str) -> None:
    """Write `latent_statistics` into the config where diffusers pipelines read them, for `norm`:
    "scale" (scaling_factor = 1/std), "shift_scale" (shift_factor = mean, scaling_factor = 1/std about
    it: SD3/FLUX pipelines use (z - shift) * scale), or "per_channel" (latents_mean / latents_std per
    channel with scaling_factor 1: SDXL-style pipelines use (z - mean) * scale / std)."""
    if norm == "scale":
        vae.register_to_config(scaling_factor=float(stats["scaling_factor"]), shift_factor=None,
                               latents_mean=None, latents_std=None)
    elif norm == "shift_scale":
        vae.register_to_config(scaling_factor=float(stats["scaling_factor"]), shift_factor=float(stats["global_mean"]),
                               latents_mean=None, latents_std=None)
    elif norm == "per_channel":
        vae.register_to_config(scaling_factor=1.0, shift_factor=None, latents_mean=list(stats["mean"]),
                               latents_std=list(stats["std"]))
    else:
        raise ValueError(f"latent norm must be scale, shift_scale or per_channel, got {norm!r}")


def measure_on_data(vae: AutoencoderKL, data: str, *, resolution: int, n: int = 256, batch: int = 16,
                    seed: int = 0) -> dict:
    """`latent_statistics` on the first `n` images of `data` (centre crops, no flips); ValueError
    naming --data when it holds no images."""
    try:
        ds = build_image_dataset(data, resolution=resolution, seed=seed, random_crop=False, random_flip=False)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--data: {e}") from None
    n = min(n, len(ds))
    batches = (torch.stack([ds[i]["x"] for i in range(s, min(s + batch, n))]) for s in range(0, n, batch))
    return latent_statistics(vae, batches, seed=seed)
