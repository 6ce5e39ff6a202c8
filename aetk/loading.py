"""`aetk.load`: any saved aetk model from any place it is saved, ready to use, without the trainer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from audio_codec.model import SoundStream
from latent_diffusion.ar_prior import ARPrior
from latent_diffusion.diffusion_prior import DiffusionPrior
from tokenizers_ae.classic.registry import classic_from_saved
from tokenizers_ae.models.kl_vae import KLVAE
from tokenizers_ae.models.video_vae import VideoVAE
from tokenizers_ae.models.vq_vae import VQVAE
from tokenizers_ae.pretrained import LoadError, Saved, locate

LOADERS: dict[str, Callable[[Saved], nn.Module]] = {
    "KLVAE": KLVAE.from_saved, "VQVAE": VQVAE.from_saved, "SoundStream": SoundStream.from_saved,
    "DiffusionPrior": DiffusionPrior.from_saved, "ARPrior": ARPrior.from_saved, "classic": classic_from_saved,
    "VideoVAE": VideoVAE.from_saved}
"""Saved class name -> its loader."""


def load(path: str | Path, *, weights: str = "ema") -> nn.Module:
    """The model at `path`, in eval mode: a run directory (its newest checkpoint, else `model/`), a
    checkpoint directory, an export directory (aetk's native format, a diffusers AutoencoderKL /
    VQModel, a prior) or a Stable Diffusion single `.safetensors` file. `weights`: a checkpoint's
    averaged (`ema`) or `raw` weights. LoadError (a ValueError) naming the path when it holds no model.

    Image tokenizers have `encode(x)` / `decode(z)` on (B, C, H, W) images in [-1, 1]; the audio codec
    `encode(x)` -> codes / `decode(codes)` on (B, 1, T); the video VAE `encode(x)` / `decode(z)` on
    (B, C, T, H, W) clips; priors `sample` (`latent_diffusion`).
    """
    saved = locate(path, weights=weights)
    if saved.class_name not in LOADERS:
        raise LoadError(f"{saved.path} holds a {saved.class_name!r} model, which this aetk does not know")
    return LOADERS[saved.class_name](saved)
