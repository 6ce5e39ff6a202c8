"""Masked autoencoder (He et al. 2022) on transformers' ViT-MAE blocks.

Patches are embedded, 75% of them are dropped *before* the encoder (it runs on the visible quarter
only, which is where MAE's training speed comes from), a light decoder gets the encoded visible
tokens plus a learned mask token for every hidden patch, and the loss is the pixel error on the
hidden patches only. transformers' `ViTMAEForPreTraining` provides the embedding + random masking,
the encoder and the decoder; the stages and the loss are spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tokenizers_ae.classic.base import ClassicOutput, ClassicPretrained, Hparams, NoiseFn, standard_normal


class MaskedAutoencoder(ClassicPretrained, nn.Module):
    """(B, C, H, W) square images, H divisible by `patch_size`. The decoder is half as wide as the
    encoder with one layer. `code_size` reports the encoder width (the code is a token sequence)."""

    variants = ("mae",)

    @classmethod
    def build(cls, c: Hparams, shape: tuple[int, ...]) -> MaskedAutoencoder:
        if len(shape) != 3:
            raise ValueError(f"variant mae needs images (C, H, W), not inputs of shape {shape}")
        return cls(input_shape=shape, patch_size=c.patch_size, dim=c.vit_dim, depth=c.vit_depth, heads=c.vit_heads,
                   mask_ratio=c.mask_ratio)

    def __init__(self, *, input_shape: Sequence[int], patch_size: int = 4, dim: int = 64, depth: int = 2,
                 heads: int = 4, mask_ratio: float = 0.75) -> None:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining  # heavy: imported when an MAE is built

        super().__init__()
        c, h, w = input_shape
        if h != w or h % patch_size:
            raise ValueError(f"MAE needs square images divisible by patch_size={patch_size}, got {h}x{w}")
        self.input_shape, self.code_size, self.mask_ratio = tuple(input_shape), dim, mask_ratio
        self.config = ViTMAEConfig(
            image_size=h, patch_size=patch_size, num_channels=c, hidden_size=dim, num_hidden_layers=depth,
            num_attention_heads=heads, intermediate_size=4 * dim, decoder_hidden_size=dim // 2,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=max(1, heads // 2),
            decoder_intermediate_size=2 * dim, mask_ratio=mask_ratio, norm_pix_loss=False)
        self.mae = ViTMAEForPreTraining(self.config)  # .vit: embed + mask + encoder; .decoder

    @property
    def num_patches(self) -> int:
        return (self.input_shape[1] // self.config.patch_size) ** 2

    def forward_encoder(self, x: torch.Tensor, mask_noise: torch.Tensor):
        """Encode the visible patches: the ones with the lowest `mask_noise` (B, L) values.
        Returns (tokens (B, 1 + L_visible, dim) with the CLS token first, mask (B, L) 1 = hidden,
        ids_restore (B, L))."""
        out = self.mae.vit(x, noise=mask_noise)
        return out.last_hidden_state, out.mask, out.ids_restore

    def forward_decoder(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible tokens + mask tokens, unshuffled -> predicted pixels per patch (B, L, p*p*C)."""
        return self.mae.decoder(tokens, ids_restore).logits

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the hidden patches only."""
        per_patch = (pred.float() - self.mae.patchify(x).float()).pow(2).mean(-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    def _mask_noise(self, x: torch.Tensor, noise: NoiseFn | None) -> torch.Tensor:
        shape = (x.shape[0], self.num_patches)
        if noise is None and not self.training:  # evaluation: the same patches every time
            return torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(x)
        return standard_normal(noise, shape, x)  # only the order matters: normals rank like uniforms

    def forward(self, x: torch.Tensor, *, y: torch.Tensor | None = None, noise: NoiseFn | None = None,
                mask_noise: torch.Tensor | None = None) -> ClassicOutput:
        """`mask_noise` (B, L) chooses the hidden patches (the highest values); default: random."""
        mask_noise = self._mask_noise(x, noise) if mask_noise is None else mask_noise
        tokens, mask, ids_restore = self.forward_encoder(x, mask_noise)
        pred = self.forward_decoder(tokens, ids_restore)  # (B, L, p*p*C)
        loss = self.forward_loss(x, pred, mask)
        # The completed image: predictions where hidden, the input where visible (as the paper shows it).
        keep = mask.unsqueeze(-1)  # (B, L, 1)
        patches = keep * pred + (1 - keep) * self.mae.patchify(x)
        recon = self.mae.unpatchify(patches, original_image_size=self.input_shape[1:])
        return ClassicOutput(recon=recon, latent=tokens[:, 0], rec_loss=loss,
                             stats={"mae/visible_tokens": torch.tensor(float(tokens.shape[1] - 1))})
