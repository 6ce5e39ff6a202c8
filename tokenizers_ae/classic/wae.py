"""Wasserstein autoencoder, MMD flavour (Tolstikhin et al. 2018): a deterministic autoencoder
whose aggregate code distribution q(z) (not each q(z|x), as in a VAE) is pulled to the prior
N(0, I) by the maximum mean discrepancy between a batch of codes and a batch of prior samples.
"""

from __future__ import annotations

import torch

from tokenizers_ae.classic.base import Autoencoder, ClassicOutput, Hparams, NoiseFn, mse, pair, standard_normal


def imq_kernel(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Inverse multiquadratic kernel C / (C + ||a_i - b_j||^2), (n, k), (m, k) -> (n, m)."""
    return scale / (scale + torch.cdist(a, b).pow(2))


def mmd(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Unbiased MMD^2 estimate between samples a (n, k) and b (m, k) under the IMQ kernel."""
    n, m = a.shape[0], b.shape[0]
    k_aa, k_bb, k_ab = imq_kernel(a, a, scale), imq_kernel(b, b, scale), imq_kernel(a, b, scale)
    off = lambda k, s: (k.sum() - k.diagonal().sum()) / (s * (s - 1))  # drop the i == j terms
    return off(k_aa, n) + off(k_bb, m) - 2 * k_ab.mean()


class WassersteinAutoencoder(Autoencoder):
    """reg: `mmd` between the batch's codes and as many N(0, I) samples (IMQ kernel with
    C = 2 * code_size, the paper's choice for a unit-variance prior)."""

    variants = ("wae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> WassersteinAutoencoder:
        return cls(**pair(c, shape))

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None) -> ClassicOutput:
        z = self.encode(x)  # (B, code)
        recon = self.decode(z)
        prior = standard_normal(noise, z.shape, z)  # (B, code) samples of p(z)
        return ClassicOutput(recon=recon, latent=z, rec_loss=mse(recon, x),
                             reg={"mmd": mmd(z.float(), prior.float(), scale=2.0 * self.code_size)},
                             stats={"code/std": z.detach().std()})

    @torch.no_grad()
    def sample(self, n: int, y=None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode n prior draws: (n, *input_shape)."""
        return self.decode(torch.randn((n, self.code_size), generator=generator).to(next(self.parameters())))
