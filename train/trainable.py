"""`train.trainable`: fine-tune one half of an autoencoder and freeze the other.

Stable Diffusion's ft-MSE VAE was made this way: the decoder was fine-tuned with the encoder frozen, so
every latent (and every diffusion model trained on them) stayed valid. A frozen half gets no gradient, no
optimizer state (the loop hands AdamW only parameters that require grad) and no EMA: the EMA model shares
the frozen tensors with the live model, and the average skips them, so an export carries them unchanged,
bit for bit.

A model says which modules make each half with `trainable_parts() -> {"encoder": (...), "decoder": (...)}`;
together they must hold every parameter, so "the rest" is well defined.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from train.config import ConfigError

HALVES = ("encoder", "decoder")


def require_source(model_cfg, trainable: str) -> None:
    """ConfigError when half a model would be frozen at its random initialisation (no `model.init_from`)."""
    if trainable != "all" and hasattr(model_cfg, "init_from") and not model_cfg.init_from:
        raise ConfigError(f"train.trainable={trainable} fine-tunes a released model: set model.init_from=PATH "
                          f"(a diffusers directory, or an SD .safetensors file for a KL-VAE)")


def freeze(model: nn.Module, trainable: str) -> str:
    """Freeze every half of `model` but `trainable` ("all": nothing). Returns a line for the log.
    ConfigError when the model cannot be split, or its halves miss a parameter."""
    if trainable == "all":
        return ""
    parts = getattr(model, "trainable_parts", None)
    if parts is None:
        raise ConfigError(f"train.trainable={trainable}: a {type(model).__name__} has no encoder/decoder split "
                          f"(KL-VAEs and video VAEs do); use train.trainable=all")
    parts = parts()
    owned = {id(p) for mods in parts.values() for m in mods for p in m.parameters()}
    missing = [n for n, p in model.named_parameters() if id(p) not in owned]
    if missing:  # a bug in the model's split, not a user mistake
        raise RuntimeError(f"{type(model).__name__}.trainable_parts misses parameters: {missing[:5]}")
    for half, mods in parts.items():
        if half != trainable:
            for m in mods:
                m.requires_grad_(False)
    n_all = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = ", ".join(h for h in parts if h != trainable)
    return (f"train.trainable={trainable}: {n_trained / 1e6:.2f}M of {n_all / 1e6:.2f}M parameters train; "
            f"{frozen} frozen (no gradient, optimizer state or EMA)")


def share_frozen(ema_module: nn.Module, live: nn.Module) -> None:
    """Make the EMA copy hold the live model's frozen parameters themselves (no second copy to average)."""
    for name, p in live.named_parameters():
        if not p.requires_grad:
            owner, _, attr = name.rpartition(".")
            setattr(ema_module.get_submodule(owner), attr, p)


def ema_of_trained(decay: float) -> Callable:
    """torch's EMA update (for AveragedModel's multi_avg_fn) over the pairs that are not one shared tensor:
    the frozen parameters `share_frozen` put in both models are left as they are."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        pairs = [(a, c) for a, c in zip(averaged, current) if a.data_ptr() != c.data_ptr()]
        if pairs:
            ema([a for a, _ in pairs], [c for _, c in pairs], n)

    return update
