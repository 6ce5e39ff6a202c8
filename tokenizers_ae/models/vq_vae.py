"""VQ-VAE / VQ-GAN image tokenizer: diffusers' VQModel encoder and decoder around any quantizer of
`tokenizers_ae.quantizers` (VQ with EMA/restarts, FSQ, LFQ). VQ-GAN is this model trained with
the perceptual + adversarial task; the model itself is the same."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import VQModel
from torch import nn

from tokenizers_ae.models.output import AEOutput
from tokenizers_ae.pretrained import Pretrained, Saved, check_finite, expect, prepare_dir, save_native
from tokenizers_ae.quantizers import FSQ, LFQ, Quantizer, ResidualVQ, VectorQuantizer, build_quantizer, quantizer_config
from tokenizers_ae.tiling import vae_decode, vae_moments

log = logging.getLogger("aetk.export")


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


class VQVAE(Pretrained, nn.Module):
    """x (B, C, H, W) -> encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

    `backbone` supplies the networks and the architecture config (for export); `quantizer`
    replaces its codebook.

    Saved as a diffusers `VQModel` when the quantizer is a plain codebook lookup (`to_diffusers`
    says why not otherwise), else in aetk's native format.
    """

    saved_name, saved_what = "VQVAE", "a VQ tokenizer"

    def __init__(self, backbone: VQModel, quantizer: Quantizer) -> None:
        super().__init__()
        self.encoder, self.quant_conv = backbone.encoder, backbone.quant_conv
        self.post_quant_conv, self.decoder = backbone.post_quant_conv, backbone.decoder
        self.quantizer = quantizer
        self.backbone_config = dict(backbone.config)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    @property
    def downsampling_factor(self) -> int:
        """Pixels per token along a side: 2 ** (levels - 1)."""
        return 2 ** (len(self.backbone_config["block_out_channels"]) - 1)

    # --- saving and loading ---------------------------------------------------------------------

    def pretrained_config(self) -> dict:
        return {"backbone": self.backbone_config, "quantizer": quantizer_config(self.quantizer)}

    @classmethod
    def from_config(cls, config: dict) -> VQVAE:
        return cls(VQModel.from_config(config["backbone"]), build_quantizer(config["quantizer"]))

    @classmethod
    def from_legacy(cls, legacy: dict) -> VQVAE:
        m = legacy["model"]
        backbone = build_vq_backbone(
            in_channels=m["in_channels"], block_out_channels=m["block_out_channels"],
            layers_per_block=m["layers_per_block"], latent_channels=m["latent_channels"],
            norm_num_groups=m["norm_num_groups"], mid_block_attention=m["mid_block_attention"],
            codebook_size=m["codebook_size"], sample_size=legacy["data"].get("resolution", 64))
        vq = dict(codebook_size=m["codebook_size"], dim=m["latent_channels"], ema_decay=m["vq_ema_decay"],
                  dead_code_threshold=m["dead_code_threshold"], kmeans_init=m["kmeans_init"], cosine=m["cosine"],
                  codebook_dim=m["codebook_dim"])
        quantizer = {"vq": lambda: VectorQuantizer(**vq),
                     "rvq": lambda: ResidualVQ(num_quantizers=m["rvq_levels"],
                                               quantizer_dropout=m["quantizer_dropout"], **vq),
                     "fsq": lambda: FSQ(levels=m["fsq_levels"], dim=m["latent_channels"]),
                     "lfq": lambda: LFQ(dim=m["latent_channels"], codebook_bits=m["lfq_bits"])}[m["quantizer"]]()
        return cls(backbone, quantizer)

    @classmethod
    def from_saved(cls, saved: Saved) -> VQVAE:
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.source != "diffusers":
            return super().from_saved(saved)
        vq = VQModel.from_pretrained(saved.path)
        cb = vq.quantize.embedding.weight  # (K, d)
        q = VectorQuantizer(codebook_size=cb.shape[0], dim=cb.shape[1])
        with torch.no_grad():
            q.codebook.copy_(cb)
        return cls(vq, q).eval()

    def to_diffusers(self) -> VQModel:
        """A diffusers VQModel holding this model (EMA-trained codebooks included).

        Raises ValueError saying why when the quantizer is not one VQModel can hold (FSQ, LFQ,
        cosine or factorised lookups, residual VQ): diffusers' VQModel quantizes by Euclidean
        nearest neighbour in `vq_embed_dim` dimensions against one codebook.
        """
        q = self.quantizer
        if isinstance(q, ResidualVQ):
            raise ValueError("diffusers VQModel holds one codebook; residual VQ sums several levels, so it is "
                             "exported in aetk's native format")
        if not isinstance(q, VectorQuantizer):
            raise ValueError(f"diffusers VQModel quantizes by codebook lookup; a {type(q).__name__} has no "
                             "codebook (its codes are computed), so it is exported in aetk's native format")
        if q.cosine or q.codebook_dim != q.dim:
            raise ValueError("diffusers VQModel looks up raw latents by Euclidean distance; cosine or factorised "
                             "(codebook_dim) lookups cannot be expressed in it, so they are exported natively")
        vq = VQModel.from_config(self.backbone_config)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("quantizer.")}
        state["quantize.embedding.weight"] = q.codebook.detach().clone()
        vq.load_state_dict(state, strict=True)
        return vq.eval()

    def save_pretrained(self, out: str | Path) -> Path:
        """A diffusers VQModel directory when the quantizer allows one, else aetk's native format (logged
        with the reason). `VQVAE.from_pretrained(out)` reads either."""
        try:
            vq = self.to_diffusers()
        except ValueError as why:
            log.warning("%s is in aetk's native format: %s", out, why)
            return save_native(self, out, class_name=self.saved_name, config=self.pretrained_config())
        check_finite(vq.state_dict(), f"VQ tokenizer for {out}")
        out = prepare_dir(out)
        vq.save_pretrained(out, safe_serialization=True)
        return out

    def encode(self, x: torch.Tensor, tile: int | None = None):
        """(B, C, H, W) -> QuantizerOutput over (B, c, h, w) latents. `tile`: run the encoder in exact
        tiles of that many pixels (bounded memory, inference only)."""
        return self.quantizer(vae_moments(self, x, tile))

    def decode(self, quantized: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        return vae_decode(self, quantized, tile)

    def reconstruct(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, C, H, W) -> decoded codes (B, C, H, W); `tile` as in `encode`."""
        return self.decode(self.encode(x, tile).quantized, tile)

    def decode_indices(self, indices: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Token grid (B, h, w) (or (B, Q, h, w) for residual VQ) -> images (B, C, H, W)."""
        return self.decode(self.quantizer.indices_to_codes(indices), tile)

    def forward(self, x: torch.Tensor, noise=None) -> AEOutput:  # noise: unused, deterministic model
        q = self.encode(x)
        recon = self.decode(q.quantized)
        return AEOutput(recon=recon, latent=q.indices, reg=q.losses, stats=q.stats)
