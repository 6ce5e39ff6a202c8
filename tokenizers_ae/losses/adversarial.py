"""GAN losses for first-stage models and the adaptive generator weight of taming-transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d_loss(kind: str, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from patch logits (any shape): hinge, or non-saturating ("vanilla")."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "vanilla":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"unknown discriminator loss {kind!r}; expected 'hinge' or 'vanilla'")


def g_loss(kind: str, logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss: -E[D(x_hat)] for hinge (as taming), softplus(-D) for non-saturating."""
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "vanilla":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"unknown discriminator loss {kind!r}; expected 'hinge' or 'vanilla'")


def adaptive_weight(nll_grad: torch.Tensor, g_grad: torch.Tensor, *, scale: float = 1.0,
                    max_weight: float = 1e4) -> torch.Tensor:
    """||dL_nll/dw|| / (||dL_g/dw|| + 1e-4), clamped to [0, max_weight], times `scale` (taming).

    Both gradients are with respect to the decoder's last layer weight `w`.
    """
    w = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach() * scale
