"""The typed result every first-stage model returns, so one task and one trainer serve them all."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AEOutput:
    recon: torch.Tensor
    """Reconstruction, same shape as the input: (B, C, H, W) images or (B, C, T) audio."""
    latent: torch.Tensor
    """What the decoder saw: (B, c, h, w) continuous latents or quantized codes."""
    reg: dict[str, torch.Tensor] = field(default_factory=dict)
    """Scalar regularisation losses by name (e.g. `kl`, `vq/commitment`), batch-reduced and
    unweighted; the task multiplies each by its configured weight."""
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached scalars worth logging (latent mean/std, codebook usage)."""
