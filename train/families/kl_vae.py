"""`model.kind: kl_vae` -- the KL-regularised autoencoder of latent diffusion (Stable Diffusion's VAE),
on diffusers' AutoencoderKL: L1/L2 + LPIPS + KL + a PatchGAN; exported as a diffusers directory with
the latent scaling factor measured on the training data, or as an SD single file.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from train.config import Config, ConfigError, ImageBackbone, ImageData, ImageGANLoss, check
from train.families.base import (
    IMAGE_REPORT_READS,
    EncodeRequest,
    EvalContext,
    ExportRequest,
    Family,
    ReportRequest,
    unread_options,
)

log = logging.getLogger("aetk.export")

SD_DEFAULT_SCALING = 0.18215
"""diffusers' AutoencoderKL default, Stable Diffusion's measured value."""


@dataclass
class KLVAEModel(ImageBackbone):
    kind: Literal["kl_vae"] = "kl_vae"
    preset: Literal["sd", "sdxl", "sd3", "flux"] | None = None
    """A released architecture (tokenizers_ae/models/presets.py) instead of the keys above: SD 1.x/2.x,
    SDXL, SD3 or FLUX.1 (16 latent channels, shift and scale). Also the layout a third-party SD single
    file in `init_from` is read with."""
    init_from: str | None = None
    """A model to fine-tune: a diffusers `AutoencoderKL` directory (its architecture wins over the
    keys above) or a Stable Diffusion / latent-diffusion single `.safetensors` file (architecture
    from aetk's metadata in it, else from the keys above)."""
    sample_posterior: bool = True
    """Train on z ~ q(z|x) (true) or on its mean."""
    latent_norm: Literal["auto", "scale", "shift_scale", "per_channel"] = "auto"
    """How the export normalises latents, measured on training images (posterior samples):
    `scale`: scaling_factor = 1/std (SD 1.x/2.x/SDXL; diffusers pipelines multiply by it);
    `shift_scale`: shift_factor = mean, scaling_factor = 1/std after the shift (SD3/FLUX pipelines
    compute (z - shift) * scale); `per_channel`: latents_mean / latents_std per channel, scaling_factor 1
    (SDXL-style pipelines' option); `auto`: shift_scale when the architecture has a shift_factor (the sd3
    and flux presets, or a model started from such a VAE), else scale."""


@dataclass
class KLVAELoss(ImageGANLoss):
    kl_weight: float = 1e-6
    """KL weight. Both terms are divided by the number of input values, so this has the meaning
    of latent-diffusion's `kl_weight` (which summed both over values)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kl_weight >= 0, "loss.kl_weight", ">= 0")


def build_model(cfg: Config):
    from diffusers import AutoencoderKL
    from safetensors import safe_open

    from tokenizers_ae.export.sd_single_file import CONFIG_METADATA_KEY, load_sd_single_file
    from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
    from tokenizers_ae.models.presets import PRESETS, build_preset, preset_config

    m: KLVAEModel = cfg.model

    def recipe_model() -> AutoencoderKL:
        """The architecture the recipe names, with fresh weights: its preset, else its model keys."""
        if m.preset:
            return build_preset(m.preset)
        return build_autoencoder_kl(
            in_channels=m.in_channels, block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
            latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups,
            mid_block_attention=m.mid_block_attention, sample_size=cfg.data.resolution)

    if not m.init_from:
        if not m.preset and (why := m.instance_norm_warning()):
            logging.getLogger("aetk.train").warning(why)
        return KLVAE(recipe_model(), sample_posterior=m.sample_posterior)
    path = Path(m.init_from)
    if path.is_file() and path.suffix == ".safetensors":
        # An SD / latent-diffusion single file: its architecture comes from the file's metadata when
        # aetk wrote it, else from model.preset or the recipe's model keys (a third-party SD VAE).
        with safe_open(str(path), framework="pt") as f:
            has_config = CONFIG_METADATA_KEY in (f.metadata() or {})
        try:
            arch = preset_config(m.preset) if m.preset else dict(recipe_model().config)
            vae = load_sd_single_file(path, config=None if has_config else arch)
        except ValueError as e:
            raise ConfigError(f"model.init_from: {e}") from None
    elif (path / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(path)  # its architecture wins over the recipe's keys
    else:
        raise ConfigError(f"model.init_from: {path} is neither a diffusers AutoencoderKL directory "
                          "(with config.json) nor a .safetensors single file")
    if m.preset:  # a preset names the layout: a model of another one is a mistake, not a silent override
        want = {"use_quant_conv": True, **PRESETS[m.preset]}
        keys = ("latent_channels", "block_out_channels", "layers_per_block", "use_quant_conv")
        diff = [f"{k}={vae.config[k]}" for k in keys if json.dumps(list(vae.config[k]) if k == "block_out_channels"
                                                                    else vae.config[k]) != json.dumps(want[k])]
        if diff:
            raise ConfigError(f"model.init_from: {path} is not a {m.preset} VAE ({', '.join(diff)}); drop "
                              "model.preset or name its layout's preset")
    vae.train()  # diffusers loaders return eval mode
    # Released VAEs (and aetk's own exports, EMA weights) carry weights only: say what starts fresh.
    logging.getLogger("aetk.train").info(
        "model.init_from: %s holds weights only; the optimizer state and the discriminator start fresh "
        "(with a GAN, set loss.disc_warmup_steps so D learns before it steers the decoder)", path)
    return KLVAE(vae, sample_posterior=m.sample_posterior)


def build_task(cfg: Config, model):
    from train.parts import gan_task, image_losses

    rec, disc = image_losses(cfg)
    return gan_task(cfg, model, rec_loss=rec, discriminator=disc, reg_weights={"kl": cfg.loss.kl_weight})


def datasets(cfg: Config):
    from train.data.sources import image_datasets

    return image_datasets(cfg)


def evaluate(ctx: EvalContext) -> dict[str, float]:
    from train.parts import evaluate_images

    return evaluate_images(ctx)


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    """The averaged model as a diffusers AutoencoderKL, with the latent scaling factor measured on the
    training data (1/std of posterior samples, as Stable Diffusion's 0.18215 was derived) and
    diffusers' `force_upcast` set from a precision audit; `latent_stats.json` beside it."""
    import torch

    from eval.latents import latent_statistics, set_latent_norm
    from eval.precision import fp16_plan, precision_audit
    from tokenizers_ae.precision import PLAN_KEY

    vae = model.vae
    device = next(vae.parameters()).device
    n = min(cfg.train.latent_stats_images, len(train_dataset))
    batches = (torch.stack([train_dataset[i]["x"] for i in range(s, min(s + 16, n))]).to(device)
               for s in range(0, n, 16))
    stats = latent_statistics(vae, batches, seed=cfg.seed)
    if not math.isfinite(stats["scaling_factor"]) or stats["scaling_factor"] <= 0:
        raise ValueError(f"the latents of the trained model on the training data are not finite (std "
                         f"{stats['global_std']}): the model diverged, so nothing was written; lower train.lr")
    norm = cfg.model.latent_norm
    if norm == "auto":
        norm = "shift_scale" if vae.config.shift_factor is not None else "scale"
    stats["latent_norm"] = norm
    set_latent_norm(vae, stats, norm)
    # diffusers pipelines upcast a VAE to fp32 when `force_upcast` is set: record whether it must.
    probe = torch.stack([train_dataset[i]["x"] for i in range(min(8, n))]).to(device)
    audit = precision_audit(vae, probe, lambda m, t: m(t, sample_posterior=False).sample)
    vae.register_to_config(force_upcast=not audit["fp16_safe"])
    stats["fp16_safe"] = audit["fp16_safe"]
    # ...and which modules `--precision auto` keeps in fp32 instead of upcasting the whole VAE.
    if not audit["fp16_safe"]:
        vae.register_to_config(**{PLAN_KEY: fp16_plan(vae, probe)})
    model.save_pretrained(out)
    (out / "latent_stats.json").write_text(json.dumps(stats, indent=1))


def encode(model, req: EncodeRequest) -> dict:
    from latent_diffusion.encode import EncodeOptions, encode_latents

    return encode_latents(model, req.data, req.out, EncodeOptions(
        resolution=req.resolution, batch_size=req.batch_size, shard_size=req.shard_size, sample=req.sample,
        flip=req.flip, dtype=req.dtype, seed=req.seed, precision=req.precision, num_workers=req.num_workers,
        tile=req.tile, split=req.split, builtin_size=req.builtin_size), state=req.processes)


def report(model, req: ReportRequest) -> dict:
    from eval.report import latent_rate
    from train.parts import image_report

    return image_report(model, req, latent_rate)


def _set_scaling(model, req: ExportRequest) -> tuple[str, dict | None]:
    """Measure (--data) or set (--scaling-factor) the latent scaling factor; say which, or warn.
    Returns (the note, the measured statistics or None)."""
    from eval.latents import measure_on_data, set_latent_norm, set_scaling_factor

    # --resolution and --n shape what --data measures; --scaling-factor replaces the measurement.
    if req.scaling_factor is not None and req.data:
        raise ValueError("--scaling-factor and --data: give one (--data measures the factor, --scaling-factor sets it)")
    if not req.data and (stray := unread_options(req, {"out", "scaling_factor"})):
        raise ValueError(f"--{stray[0]} sets the images --data measures the scaling factor on; give --data too")
    if req.scaling_factor is not None:
        set_scaling_factor(model.vae, req.scaling_factor)
        return "", None
    if req.data:
        stats = measure_on_data(model.vae, req.data, resolution=req.resolution, n=req.n)
        c = model.vae.config  # measure again in the model's own layout
        norm = ("shift_scale" if c.shift_factor is not None else
                "per_channel" if c.latents_mean is not None else "scale")
        set_latent_norm(model.vae, stats, norm)
        shift = f", shift_factor {stats['global_mean']:.5f}" if norm == "shift_scale" else ""
        note = f"measured {norm} (scaling_factor {model.scaling_factor:.5f}{shift}) on {stats['n']} images; "
        return note, {**stats, "latent_norm": norm, "data": req.data, "resolution": req.resolution}
    if abs(model.scaling_factor - SD_DEFAULT_SCALING) < 1e-9:
        log.warning(
            "scaling_factor is diffusers' default %.5f (Stable Diffusion's), not measured on this model; pass "
            "--data to measure it or --scaling-factor to set it", SD_DEFAULT_SCALING)
    return "", None


def export_diffusers(model, req: ExportRequest) -> str:
    note, stats = _set_scaling(model, req)
    out = model.save_pretrained(req.out)
    if stats is not None:  # what the model card says the factors were measured on
        (Path(out) / "latent_stats.json").write_text(json.dumps(stats, indent=1))
    return f"{note}wrote a diffusers AutoencoderKL to {out} (scaling_factor {model.scaling_factor:.5f})"


def export_single_file(model, req: ExportRequest) -> str:
    note, _ = _set_scaling(model, req)
    try:
        out = model.save_single_file(req.out)
    except ValueError as e:
        raise ConfigError(f"--out: {e}") from None
    return f"{note}wrote an SD single file to {out} (scaling_factor {model.scaling_factor:.5f})"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "encode": frozenset({
        "data", "out", "processes", "resolution", "batch_size", "shard_size", "flip", "seed", "precision",
        "num_workers", "tile", "split", "builtin_size", "sample", "dtype"}),
    "eval": IMAGE_REPORT_READS,
    "export": frozenset({"out", "data", "resolution", "n", "scaling_factor"}),
}

FAMILY = Family(
    kind="kl_vae", summary="KL-VAE on diffusers AutoencoderKL (continuous latents for latent diffusion)",
    model=KLVAEModel, data=ImageData, loss=KLVAELoss, saved_names=("KLVAE",),
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=lambda: evaluate, export=export,
    encode=encode, report=report, exports={"diffusers": export_diffusers, "sd-single-file": export_single_file},
    reads=READS)
