"""KL-regularised autoencoder (the latent-diffusion / Stable Diffusion VAE) on diffusers' `AutoencoderKL`.

Keeping diffusers' class as the network means an exported model is a working `AutoencoderKL`
(`save_pretrained` / `from_pretrained`) with no conversion step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL
from torch import nn

from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.tiling import vae_decode, vae_moments

NoiseFn = Callable[[torch.Size], torch.Tensor]


def build_autoencoder_kl(
    *,
    in_channels: int = 3,
    block_out_channels: Sequence[int] = (64, 128),
    layers_per_block: int = 1,
    latent_channels: int = 4,
    norm_num_groups: int = 32,
    mid_block_attention: bool = True,
    sample_size: int = 64,
) -> AutoencoderKL:
    """A diffusers AutoencoderKL with downsampling factor 2**(len(block_out_channels)-1)."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=mid_block_attention,
    )


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over every non-batch dim: (B, ...) -> (B,) nats.

    Reducing over range(1, ndim) (not diffusers' fixed [1, 2, 3]) serves (B, c, t) audio latents too.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.sum(dim=tuple(range(1, kl.ndim)))


class KLVAE(nn.Module):
    """x -> q(z|x) = N(mean, var) -> z -> x_hat, with a per-value KL term.

    `vae` is any diffusers AutoencoderKL (built fresh or loaded to fine-tune).
    """

    def __init__(self, vae: AutoencoderKL, *, sample_posterior: bool = True) -> None:
        super().__init__()
        self.vae = vae
        self.sample_posterior = sample_posterior

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output conv: where the adaptive GAN weight is measured."""
        return self.vae.decoder.conv_out.weight

    def encode_moments(self, x: torch.Tensor, tile: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> mean, logvar each (B, c, h, w); logvar clamped as diffusers does.
        `tile`: run in exact tiles of that many pixels (bounded memory, inference only)."""
        moments = vae_moments(self.vae, x, tile) if tile else self.vae._encode(x)  # (B, 2c, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, c, h, w) -> (B, C, H, W); `tile` as in `encode_moments`."""
        return vae_decode(self.vae, z, tile) if tile else self.vae._decode(z, return_dict=False)[0]

    def forward(self, x: torch.Tensor, noise: NoiseFn | None = None) -> AEOutput:
        """Reconstruct x. `noise(shape)` supplies the posterior noise (default: torch.randn) so a
        trainer can make it independent of how a batch is split across processes."""
        mean, logvar = self.encode_moments(x)  # (B, c, h, w)
        if self.sample_posterior and self.training:
            eps = noise(mean.shape) if noise is not None else torch.randn_like(mean)
            z = mean + torch.exp(0.5 * logvar) * eps.to(mean)
        else:
            z = mean
        recon = self.decode(z)  # (B, C, H, W)
        # KL in nats per input value: matches latent-diffusion's kl_weight, whose losses were sums.
        kl = gaussian_kl(mean.float(), logvar.float()).mean() / x[0].numel()
        stats = {"latent/mean": mean.detach().mean(), "latent/std": mean.detach().float().std()}
        return AEOutput(recon=recon, latent=z, reg={"kl": kl}, stats=stats)
