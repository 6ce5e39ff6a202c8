"""Image losses and discriminators applied to videos frame by frame.

A video tokenizer reuses the image parts (L1 + LPIPS, the PatchGAN) on every frame: `PerFrame`
folds time into the batch, (B, C, T, H, W) -> (B*T, C, H, W), before calling the wrapped module,
so its per-item outputs come out per frame, real and fake frames staying in batch order.
`TemporalReconstruction` adds the one term a per-frame loss cannot see: the error of the frame
differences, which is flicker.
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


class Wrapper(nn.Module):
    """A module around `self.module` whose attributes (e.g. a reconstruction loss's `perceptual`)
    stay reachable through the wrapper."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


class PerFrame(Wrapper):
    """`module(*args)` with every 5-D tensor argument folded by `fold_frames` (None and scalars pass)."""

    def forward(self, *args):
        return self.module(*(fold_frames(a) if isinstance(a, torch.Tensor) else a for a in args))


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T-1, H, W): x[:, :, t+1] - x[:, :, t]."""
    return x[:, :, 1:] - x[:, :, :-1]


class TemporalReconstruction(Wrapper):
    """A per-frame reconstruction loss plus `weight` * mean |diff_t(recon) - diff_t(x)|.

    Per-frame L1 lets each frame's error wander independently from frame to frame, which a viewer
    sees as flicker (and `eval.video` reports as the frame-difference error). Penalising the error
    of the frame differences directly asks consecutive reconstructions to move as the input moves.
    Same call and return as the wrapped loss: (recon, x, logvar) -> (nll, logs), on (B, C, T, H, W).
    The temporal term sits outside a learned log-variance (it is a regulariser of motion, not a
    likelihood of pixels).
    """

    def __init__(self, per_frame: nn.Module, *, weight: float) -> None:
        super().__init__(per_frame)
        if weight < 0:
            raise ValueError(f"temporal weight must be >= 0, got {weight}")
        self.weight = weight

    def forward(self, recon: torch.Tensor, x: torch.Tensor, logvar: torch.Tensor | None = None):
        nll, logs = self.module(recon, x, logvar)
        if self.weight == 0 or recon.ndim != 5 or recon.shape[2] < 2:
            return nll, logs
        t = (frame_differences(recon.float()) - frame_differences(x.float())).abs().mean()
        logs = {**logs, "rec/temporal": t.detach()}
        return nll + self.weight * t, logs
