"""Image losses and discriminators applied to videos frame by frame.

A video tokenizer reuses the image parts (L1 + LPIPS, the PatchGAN) on every frame: `PerFrame`
folds time into the batch, (B, C, T, H, W) -> (B*T, C, H, W), before calling the wrapped module,
so its per-item outputs come out per frame, real and fake frames staying in batch order.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frames of a video adjacent; other shapes pass through."""
    if x.ndim != 5:
        return x
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


class PerFrame(nn.Module):
    """`module(*args)` with every 5-D tensor argument folded by `fold_frames` (None and scalars pass)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, name: str):
        # The wrapped module's attributes (e.g. a reconstruction loss's `perceptual`) stay reachable.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, *args):
        return self.module(*(fold_frames(a) if isinstance(a, torch.Tensor) else a for a in args))
