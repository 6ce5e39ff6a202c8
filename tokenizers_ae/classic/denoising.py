"""Denoising autoencoder (Vincent et al. 2008): reconstruct the clean input from a corrupted copy,
so the code must capture the data's structure rather than copy pixels.

Corruptions take one standard-normal tensor shaped like the input (the step's noise) and turn it
into what they need (uniform draws via the normal CDF), so a resumed run corrupts exactly as before.
Values are on the [-1, 1] scale.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_ae.classic.base import Autoencoder, ClassicOutput, Hparams, NoiseFn, mse, pair, standard_normal


class GaussianNoise(nn.Module):
    """x + std * eps."""

    def __init__(self, *, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return x + self.std * eps


class MaskingNoise(nn.Module):
    """Each value is replaced by `fill` with probability p (Vincent's masking noise; 0 is the middle
    of the range, so a masked value says "unknown" rather than "black" or "white")."""

    def __init__(self, *, p: float, fill: float = 0.0) -> None:
        super().__init__()
        self.p, self.fill = p, fill

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(eps)  # U(0, 1): the normal CDF of a normal draw
        return torch.where(u < self.p, torch.full_like(x, self.fill), x)


class SaltAndPepper(nn.Module):
    """Each value is set to `low` with probability p/2 and to `high` with probability p/2."""

    def __init__(self, *, p: float, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__()
        self.p, self.low, self.high = p, low, high

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        u = torch.special.ndtr(eps)
        x = torch.where(u < self.p / 2, torch.full_like(x, self.low), x)
        return torch.where((u >= self.p / 2) & (u < self.p), torch.full_like(x, self.high), x)


CORRUPTIONS = {"gaussian": lambda level: GaussianNoise(std=level), "masking": lambda level: MaskingNoise(p=level),
               "salt_pepper": lambda level: SaltAndPepper(p=level)}


class DenoisingAutoencoder(Autoencoder):
    """Training: encode corrupt(x), reconstruct x. Evaluation (`model.eval()`): no corruption, so
    `model(x_noisy).recon` is the denoised image."""

    variants = ("denoising",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> DenoisingAutoencoder:
        return cls(**pair(c, shape), corruption=CORRUPTIONS[c.corruption](c.corruption_level))

    def __init__(self, *, encoder: nn.Module, decoder: nn.Module, input_shape, code_size: int,
                 corruption: nn.Module) -> None:
        super().__init__(encoder=encoder, decoder=decoder, input_shape=input_shape, code_size=code_size)
        self.corruption = corruption

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        x_in = self.corruption(x, standard_normal(noise, x.shape, x)) if self.training else x
        z = self.encode(x_in)  # (B, code)
        recon = self.decode(z)
        return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x),  # the clean x is the target
                             stats={"denoising/input_mse": mse(x_in, x).detach()})
