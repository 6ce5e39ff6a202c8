"""`model.kind: vq_vae` -- image tokenizers: diffusers' VQModel encoder/decoder around any quantizer
(VQ with EMA, k-means and restarts; residual VQ; FSQ; LFQ). Trained with the discriminator on, it
is a VQ-GAN. Exported as a diffusers VQModel when the quantizer is a plain codebook lookup, else in
aetk's native format.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from train.config import Config, ImageBackbone, ImageData, ImageGANLoss, QuantizerConfig, check
from train.families.base import IMAGE_REPORT_READS, EncodeRequest, EvalContext, ExportRequest, Family, ReportRequest


@dataclass
class VQVAEModel(ImageBackbone):
    kind: Literal["vq_vae"] = "vq_vae"
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    """The bottleneck: `type` vq, rvq, fsq or lfq and its settings."""


@dataclass
class VQVAELoss(ImageGANLoss):
    commitment_weight: float = 0.25
    """VQ/LFQ commitment loss weight (beta)."""
    codebook_weight: float = 1.0
    """VQ codebook loss weight (only without EMA updates)."""
    entropy_weight: float = 0.1
    """LFQ entropy loss weight."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("commitment_weight", "codebook_weight", "entropy_weight"):
            check(getattr(self, k) >= 0, f"loss.{k}", ">= 0")


def build_quantizer(q: QuantizerConfig, dim: int):
    """The quantizer a `model.quantizer` section describes, over `dim` latent channels."""
    from tokenizers_ae.quantizers import FSQ, LFQ, ResidualVQ, VectorQuantizer

    if q.type == "vq":
        return VectorQuantizer(**q.vq_kwargs(dim))
    if q.type == "rvq":
        return ResidualVQ(num_quantizers=q.levels, quantizer_dropout=q.dropout, **q.vq_kwargs(dim))
    if q.type == "fsq":
        return FSQ(levels=q.fsq_levels, dim=dim)
    return LFQ(dim=dim, codebook_bits=q.lfq_bits)


def build_model(cfg: Config):
    from tokenizers_ae.models.vq_vae import VQVAE, build_vq_backbone

    m: VQVAEModel = cfg.model
    if why := m.instance_norm_warning():
        logging.getLogger("aetk.train").warning(why)
    backbone = build_vq_backbone(
        in_channels=m.in_channels, block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
        latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups,
        mid_block_attention=m.mid_block_attention, codebook_size=m.quantizer.codebook_size,
        sample_size=cfg.data.resolution)
    return VQVAE(backbone, build_quantizer(m.quantizer, m.latent_channels))


def build_task(cfg: Config, model):
    from train.parts import gan_task, image_losses

    loss: VQVAELoss = cfg.loss
    rec, disc = image_losses(cfg)
    weights = {"vq/commitment": loss.commitment_weight, "vq/codebook": loss.codebook_weight,
               "lfq/commitment": loss.commitment_weight, "lfq/entropy": loss.entropy_weight}
    return gan_task(cfg, model, rec_loss=rec, discriminator=disc, reg_weights=weights)


def datasets(cfg: Config):
    from train.data.sources import image_datasets

    return image_datasets(cfg)


def evaluate(ctx: EvalContext) -> dict[str, float]:
    from train.parts import evaluate_images

    return evaluate_images(ctx)


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    """A diffusers VQModel, or aetk's native format with the reason logged."""
    model.save_pretrained(out)


def encode(model, req: EncodeRequest) -> dict:
    from latent_diffusion.encode import EncodeOptions, encode_tokens

    return encode_tokens(model, req.data, req.out, EncodeOptions(
        resolution=req.resolution, batch_size=req.batch_size, shard_size=req.shard_size, flip=req.flip,
        seed=req.seed, precision=req.precision, num_workers=req.num_workers, tile=req.tile, split=req.split,
        builtin_size=req.builtin_size), state=req.processes)


def report(model, req: ReportRequest) -> dict:
    from eval.report import token_rate
    from train.parts import image_report

    return image_report(model, req, token_rate)


def export_diffusers(model, req: ExportRequest) -> str:
    from tokenizers_ae.pretrained import NATIVE_CONFIG

    out = model.save_pretrained(req.out)
    what = "aetk's native format (no diffusers VQModel holds this quantizer)" if (out / NATIVE_CONFIG).is_file() \
        else "a diffusers VQModel"
    return f"wrote {what} to {out}"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "encode": frozenset({
        "data", "out", "processes", "resolution", "batch_size", "shard_size", "flip", "seed", "precision",
        "num_workers", "tile", "split", "builtin_size"}),
    "eval": IMAGE_REPORT_READS,
    "export": frozenset({"out"}),
}

FAMILY = Family(
    kind="vq_vae", summary="VQ-VAE / VQ-GAN image tokenizer (VQ, residual VQ, FSQ or LFQ tokens)",
    model=VQVAEModel, data=ImageData, loss=VQVAELoss, saved_names=("VQVAE",),
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=lambda: evaluate, export=export,
    encode=encode, report=report, exports={"diffusers": export_diffusers},
    reads=READS)
