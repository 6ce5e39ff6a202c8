"""Variational autoencoder (Kingma & Welling 2014), beta-VAE (Higgins et al. 2017) and the
conditional VAE (Sohn et al. 2015).

q(z|x) = N(mean, diag(exp(logvar))), p(z) = N(0, I), p(x|z) = N(decoder(z), decoder_std^2 I).
The model's losses are per input value, so with D values per example
    rec_loss + beta * reg["kl"] = -(beta-)ELBO / D      (nats per value),
and `elbo(x)` gives the ELBO itself in nats per example. beta > 1 trades reconstruction for a
code closer to the prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tokenizers_ae.classic.base import (
    ClassicOutput,
    ClassicPretrained,
    Hparams,
    NoiseFn,
    mlp,
    mse,
    numel,
    standard_normal,
)


def gaussian_nll(recon: torch.Tensor, x: torch.Tensor, std: float) -> torch.Tensor:
    """-log N(x; recon, std^2) per value, (B, ...) -> (B, ...)."""
    return 0.5 * ((x.float() - recon.float()) / std).pow(2) + math.log(std) + 0.5 * math.log(2 * math.pi)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the code, (B, k) -> (B,)."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).sum(1)


def vae_parts(c: Hparams, shape: Sequence[int], extra: int = 0) -> dict:
    """Encoder D (+ label) -> hidden -> 2k (mean, logvar); decoder k (+ label) -> hidden -> D."""
    d, hid = numel(shape), list(c.hidden_sizes)
    return dict(encoder=mlp([d + extra, *hid, 2 * c.code_size], c.activation),
                decoder=mlp([c.code_size + extra, *hid[::-1], d], c.activation),
                input_shape=shape, code_size=c.code_size, decoder_std=c.decoder_std)


class VAE(ClassicPretrained, nn.Module):
    """encoder: (B, D) -> (B, 2 * code_size) (mean, logvar); decoder: (B, code_size) -> (B, D)."""

    variants = ("vae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> VAE:
        return cls(**vae_parts(c, shape))

    def __init__(self, *, encoder: nn.Module, decoder: nn.Module, input_shape: Sequence[int], code_size: int,
                 decoder_std: float = 0.2) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.input_shape, self.code_size, self.decoder_std = tuple(input_shape), code_size, decoder_std

    @property
    def input_size(self) -> int:
        return int(torch.Size(self.input_shape).numel())

    # The conditional VAE overrides these two to append the label.
    def _encoder_input(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return x.flatten(1)

    def _decoder_input(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return z

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, *input_shape) -> mean, logvar, each (B, code_size)."""
        mean, logvar = self.encoder(self._encoder_input(x, y)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior mean (B, code_size): the deterministic code."""
        return self.posterior(x, y)[0]

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, code_size) -> mean of p(x|z), (B, *input_shape)."""
        return self.decoder(self._decoder_input(z, y)).reshape(-1, *self.input_shape)

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        mean, logvar = self.posterior(x, y)  # (B, k) each
        # Reparameterisation: z = mean + sigma * eps keeps the sample differentiable. Eval uses the mean.
        z = mean + (0.5 * logvar).exp() * standard_normal(noise, mean.shape, mean) if self.training else mean
        recon = self.decode(z, y)
        kl = kl_to_standard_normal(mean, logvar)  # (B,) nats
        return ClassicOutput(recon=recon, latent=mean, rec_loss=gaussian_nll(recon, x, self.decoder_std).mean(),
                             reg={"kl": kl.mean() / self.input_size},
                             stats={"vae/kl_nats": kl.detach().mean(), "vae/mse": mse(recon, x).detach()})

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, y: torch.Tensor | None = None, *, samples: int = 8,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) in nats per example, (B,); the expectation
        over `samples` draws of z, the KL in closed form."""
        mean, logvar = self.posterior(x, y)
        loglik = torch.zeros(x.shape[0], device=x.device)
        for _ in range(samples):
            eps = torch.randn(mean.shape, generator=generator).to(mean)
            recon = self.decode(mean + (0.5 * logvar).exp() * eps, y)
            loglik += -gaussian_nll(recon, x, self.decoder_std).flatten(1).sum(1) / samples
        return loglik - kl_to_standard_normal(mean, logvar)

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n draws from the prior: (n, *input_shape) (the decoder's mean)."""
        z = torch.randn((n, self.code_size), generator=generator).to(next(self.parameters()))
        return self.decode(z, y)


class ConditionalVAE(VAE):
    """q(z|x, y) and p(x|z, y): the one-hot label is appended to the encoder's and the decoder's
    input, so the code need not carry the class and `sample(n, y)` draws a chosen digit."""

    variants = ("cvae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> ConditionalVAE:
        return cls(num_classes=c.num_classes, **vae_parts(c, shape, extra=c.num_classes))

    def __init__(self, *, num_classes: int, **parts) -> None:
        super().__init__(**parts)
        self.num_classes = num_classes

    def _onehot(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if y is None:
            raise ValueError("a conditional VAE needs labels y (B,); train it on labelled data (builtin:digits)")
        return F.one_hot(y.long(), self.num_classes).to(like)

    def _encoder_input(self, x, y):
        return torch.cat([x.flatten(1), self._onehot(y, x)], dim=1)  # (B, D + classes)

    def _decoder_input(self, z, y):
        return torch.cat([z, self._onehot(y, z)], dim=1)  # (B, k + classes)
