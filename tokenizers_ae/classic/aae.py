"""Adversarial autoencoder (Makhzani et al. 2016): a deterministic autoencoder whose code
distribution is matched to a prior by a discriminator on the latent space, not by a KL term.

`AdversarialAutoencoder` is a plain autoencoder that can sample; this module also holds the
latent discriminator and its two losses. The training task (`train/classic_task.py`) owns the
discriminator: each step it trains the discriminator to tell prior samples (real) from codes
(fake), and the autoencoder to reconstruct and to make its codes look like prior samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizers_ae.classic.base import Autoencoder, Hparams, pair


class LatentDiscriminator(nn.Module):
    """(B, code_size) -> (B,) logits, "is this a prior sample?"."""

    def __init__(self, *, code_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(code_size, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


def discriminator_loss(logits_prior: torch.Tensor, logits_code: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: prior samples are 1, codes are 0."""
    return F.softplus(-logits_prior).mean() + F.softplus(logits_code).mean()


def generator_loss(logits_code: torch.Tensor) -> torch.Tensor:
    """Non-saturating: the encoder wants its codes called prior samples."""
    return F.softplus(-logits_code).mean()


class AdversarialAutoencoder(Autoencoder):
    """A plain autoencoder (recon + whatever the task adds); its codes are matched to N(0, I) by the
    task's `LatentDiscriminator`, so decoding prior draws gives samples."""

    variants = ("aae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> AdversarialAutoencoder:
        return cls(**pair(c, shape))

    @torch.no_grad()
    def sample(self, n: int, y=None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n prior draws: (n, *input_shape)."""
        return self.decode(torch.randn((n, self.code_size), generator=generator).to(next(self.parameters())))
