"""VQ-VAE / VQ-GAN image tokenizer: diffusers' VQModel encoder and decoder around any quantizer of
`tokenizers_ae.quantizers` (VQ with EMA/restarts, FSQ, LFQ). VQ-GAN is this model trained with
the perceptual + adversarial task; the model itself is the same."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import VQModel
from torch import nn

from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.quantizers import Quantizer
from tokenizers_ae.tiling import vae_decode, vae_moments


def build_vq_backbone(*, in_channels: int = 3, block_out_channels: Sequence[int] = (64, 128),
                      layers_per_block: int = 1, latent_channels: int = 4, norm_num_groups: int = 32,
                      mid_block_attention: bool = True, codebook_size: int = 1024,
                      sample_size: int = 64) -> VQModel:
    """A diffusers VQModel (its own `quantize` is replaced by the caller's quantizer)."""
    n = len(block_out_channels)
    return VQModel(in_channels=in_channels, out_channels=in_channels,
                   down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                   block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                   latent_channels=latent_channels, norm_num_groups=norm_num_groups,
                   num_vq_embeddings=codebook_size, vq_embed_dim=latent_channels, sample_size=sample_size,
                   mid_block_add_attention=mid_block_attention)


class VQVAE(nn.Module):
    """x (B, C, H, W) -> encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

    `backbone` supplies the networks and the architecture config (for export); `quantizer`
    replaces its codebook.
    """

    def __init__(self, backbone: VQModel, quantizer: Quantizer) -> None:
        super().__init__()
        self.encoder, self.quant_conv = backbone.encoder, backbone.quant_conv
        self.post_quant_conv, self.decoder = backbone.post_quant_conv, backbone.decoder
        self.quantizer = quantizer
        self.backbone_config = dict(backbone.config)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def encode(self, x: torch.Tensor, tile: int | None = None):
        """(B, C, H, W) -> QuantizerOutput over (B, c, h, w) latents. `tile`: run the encoder in exact
        tiles of that many pixels (bounded memory, inference only)."""
        return self.quantizer(vae_moments(self, x, tile))

    def decode(self, quantized: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        return vae_decode(self, quantized, tile)

    def decode_indices(self, indices: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Token grid (B, h, w) (or (B, Q, h, w) for residual VQ) -> images (B, C, H, W)."""
        return self.decode(self.quantizer.indices_to_codes(indices), tile)

    def forward(self, x: torch.Tensor, noise=None) -> AEOutput:  # noise: unused, deterministic model
        q = self.encode(x)
        recon = self.decode(q.quantized)
        return AEOutput(recon=recon, latent=q.indices, reg=q.losses, stats=q.stats)
