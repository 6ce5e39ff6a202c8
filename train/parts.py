"""Parts several families assemble: the adversarial autoencoder task from a recipe, the image
losses, the reconstruction evaluation of image tokenizers, and their `aetk eval` report."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from eval.image import reconstruction_metrics, save_reconstruction_grid
from eval.latents import latent_statistics
from eval.precision import precision_audit
from eval.report import Rate, evaluate
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.losses.reconstruction import ReconstructionLoss
from train.config import Config, ConfigError, GANLoss, ImageGANLoss
from train.families.base import EvalContext, ReportRequest
from train.tasks import AutoencoderGANTask


def gan_task(cfg: Config, model: nn.Module, *, rec_loss: nn.Module, discriminator: nn.Module | None,
             reg_weights: dict[str, float], feature_weight: float = 0.0) -> AutoencoderGANTask:
    """The adversarial autoencoder task with the recipe's GAN and optimizer settings. The
    discriminator is always built (it costs memory, not time, before disc_start) so a run resumed
    with a larger max_steps finds the same checkpoint layout."""
    loss: GANLoss = cfg.loss
    t = cfg.train
    return AutoencoderGANTask(
        autoencoder=model, rec_loss=rec_loss, discriminator=discriminator, reg_weights=reg_weights,
        lr=t.lr, disc_lr=t.disc_lr, betas=t.betas, weight_decay=t.weight_decay,
        disc_start=loss.disc_start, disc_weight=loss.disc_weight, adaptive=loss.adaptive_weight,
        disc_loss=loss.disc_loss, learn_logvar=getattr(loss, "learn_logvar", False), ramp_steps=loss.disc_ramp_steps,
        max_d_weight=loss.max_d_weight, r1_weight=loss.r1_weight, feature_weight=feature_weight)


def image_losses(cfg: Config) -> tuple[ReconstructionLoss, NLayerDiscriminator]:
    """Pixel + LPIPS reconstruction loss and the PatchGAN of an image tokenizer's recipe."""
    loss: ImageGANLoss = cfg.loss
    perceptual = None
    if loss.perceptual_weight > 0:
        try:
            perceptual = LPIPS(backbone=loss.perceptual_backbone, weights_path=loss.perceptual_weights)
        except FileNotFoundError as e:
            raise ConfigError(f"loss.perceptual_weights: {e}") from None
    rec = ReconstructionLoss(kind=loss.rec_loss, perceptual=perceptual, perceptual_weight=loss.perceptual_weight)
    disc = NLayerDiscriminator(in_channels=cfg.model.in_channels, channels=loss.disc_channels,
                               n_layers=loss.disc_layers, norm=loss.disc_norm)
    return rec, disc


@torch.no_grad()
def evaluate_images(ctx: EvalContext) -> dict[str, float]:
    """Reconstruct the validation batch: PSNR, SSIM (and LPIPS when the task's perceptual network is
    pretrained), and a reconstruction grid."""
    model = ctx.model
    was_training = model.training
    model.eval()
    x = ctx.val_batch["x"]
    with ctx.autocast():
        recon = model(x).recon.float().clamp(-1, 1)
    model.train(was_training)
    lp = ctx.task.rec_loss.perceptual
    metrics = reconstruction_metrics(x, recon, lpips=lp if lp is not None and lp.pretrained else None)
    save_reconstruction_grid(x, recon, path=ctx.samples / f"recon-{ctx.step:07d}.png")
    return {f"eval/{k}": v for k, v in metrics.items()}


def report_images(model: nn.Module, req: ReportRequest, rate: Callable[..., Rate]) -> dict:
    """`aetk eval` of an image tokenizer on held-out images of `req.data` (see `eval.report`)."""
    if not req.data:
        raise ConfigError("--data is required: the images to evaluate on")
    if req.resolution < 8:
        raise ConfigError(f"--resolution {req.resolution}: must be at least 8 pixels")
    builtin = req.data.startswith("builtin:")

    def images(split: str, start: int, n: int) -> torch.Tensor | None:
        ds = build_image_dataset(req.data, resolution=req.resolution, random_crop=False, random_flip=False,
                                 split=split)
        idx = range(start, min(start + n, len(ds)))
        return torch.stack([ds[i]["x"] for i in idx]) if len(idx) else None

    # Held-out images for the metrics; PCA is fitted on other images of the same source.
    n = req.n or 64
    x = images("val" if builtin else "train", 0, n)
    if x is None:
        raise ConfigError(f"--data {req.data}: no images to evaluate")
    fit = images("train", 0 if builtin else n, req.fit_n) if "pca" in req.baselines else None
    result = evaluate(model, x, rate=rate, fit_x=fit, baselines=req.baselines, latent_bits=req.latent_bits,
                      tile=req.tile, lpips_weights=req.lpips_weights, inception_weights=req.inception_weights,
                      out_dir=req.out_dir)
    if req.precision_audit:
        result["precision_audit"] = precision_audit(model, x[:8], lambda m, t: m.reconstruct(t))
    return result


def measured_scaling(model, data: str, *, resolution: int, n: int = 256, batch: int = 16, seed: int = 0) -> dict:
    """Latent statistics of a KL-VAE on the first `n` images of `data` (centre crops, no flips)."""
    try:
        ds = build_image_dataset(data, resolution=resolution, seed=seed, random_crop=False, random_flip=False)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--data: {e}") from None
    n = min(n, len(ds))
    batches = (torch.stack([ds[i]["x"] for i in range(s, min(s + batch, n))]) for s in range(0, n, batch))
    return latent_statistics(model.vae, batches, seed=seed)
