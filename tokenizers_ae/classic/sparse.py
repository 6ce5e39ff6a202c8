"""Sparse autoencoders: a code with many units of which few are active per input.

- `KLSparseAutoencoder`: sigmoid code units whose mean activation over the batch is pulled to a
  target rate rho by sum_j KL(rho || rho_hat_j) (Ng's CS294A notes).
- `L1Autoencoder`: ReLU code with an L1 penalty; with a code wider than the input it is the
  overcomplete autoencoder kept from learning the identity by that penalty.
- `TopKAutoencoder`: keep the k largest code units and zero the rest (Makhzani & Frey's k-sparse
  autoencoder): exactly k active units by construction, no penalty to tune.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_ae.classic.base import Autoencoder, Hparams, numel, pair


def bernoulli_kl(rho: float, rho_hat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) elementwise."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


class KLSparseAutoencoder(Autoencoder):
    """The encoder must end in a sigmoid (activations are rates in (0, 1)). reg: `sparsity/kl`."""

    variants = ("sparse_kl",)

    def __init__(self, *, rho: float = 0.05, **parts) -> None:
        super().__init__(**parts)
        self.rho = rho

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> KLSparseAutoencoder:
        return cls(rho=c.rho, **pair(c, shape, nn.Sigmoid()))

    def regularisers(self, x, z):
        rho_hat = z.float().mean(0)  # (code,) mean activation of each unit over the batch
        return {"sparsity/kl": bernoulli_kl(self.rho, rho_hat).sum()}

    def forward(self, x, **kw):
        out = super().forward(x, **kw)
        out.stats["sparsity/mean_activation"] = out.latent.detach().mean()
        return out


class L1Autoencoder(Autoencoder):
    """reg: `sparsity/l1` = sum over code units of |z|, averaged over the batch."""

    variants = ("sparse_l1", "overcomplete")

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> L1Autoencoder:
        if c.variant == "overcomplete" and c.code_size <= numel(shape):
            raise ValueError(f"code_size: overcomplete means a code wider than the input ({numel(shape)} values), "
                             f"got {c.code_size}")
        return cls(**pair(c, shape, nn.ReLU()))

    def regularisers(self, x, z):
        return {"sparsity/l1": z.float().abs().sum(1).mean()}

    def forward(self, x, **kw):
        out = super().forward(x, **kw)
        out.stats["sparsity/active_fraction"] = (out.latent.detach() > 0).float().mean()
        return out


def keep_topk(z: torch.Tensor, k: int) -> torch.Tensor:
    """(B, n) -> (B, n) with all but the k largest entries of each row set to zero."""
    values, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, values)


class TopKAutoencoder(Autoencoder):
    """Linear encoder output, then only the k largest units survive: ||z||_0 = k for every input."""

    variants = ("topk",)

    def __init__(self, *, k: int, **parts) -> None:
        super().__init__(**parts)
        self.k = k

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> TopKAutoencoder:
        return cls(k=c.k, **pair(c, shape))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return keep_topk(super().encode(x), self.k)  # (B, code), k nonzeros per row
