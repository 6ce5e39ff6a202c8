"""Parts several families assemble: the adversarial autoencoder task from a recipe, the image
losses, the periodic reconstruction evaluation of image tokenizers and the wiring of their
`aetk eval` report."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from eval.image import reconstruction_metrics, save_reconstruction_grid
from eval.report import Rate, evaluate_on_data
from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.losses.perceptual import LPIPS, HaarPSIDistance, MSSSIMDistance
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
        disc_start=loss.disc_start, disc_warmup=loss.disc_warmup_steps, disc_weight=loss.disc_weight,
        adaptive=loss.adaptive_weight,
        disc_loss=loss.disc_loss, learn_logvar=getattr(loss, "learn_logvar", False), ramp_steps=loss.disc_ramp_steps,
        max_d_weight=loss.max_d_weight, r1_weight=loss.r1_weight, feature_weight=feature_weight)


def image_losses(cfg: Config) -> tuple[ReconstructionLoss, NLayerDiscriminator]:
    """Pixel + LPIPS reconstruction loss and the PatchGAN of an image tokenizer's recipe."""
    loss: ImageGANLoss = cfg.loss
    perceptual = None
    if loss.perceptual_weight > 0 and loss.perceptual_backbone == "haarpsi":
        perceptual = HaarPSIDistance()
    elif loss.perceptual_weight > 0 and loss.perceptual_backbone == "ms_ssim":
        perceptual = MSSSIMDistance()
    elif loss.perceptual_weight > 0:
        try:
            perceptual = LPIPS(backbone=loss.perceptual_backbone, weights_path=loss.perceptual_weights)
        except FileNotFoundError as e:
            raise ConfigError(f"loss.perceptual_weights: {e}") from None
    rec = ReconstructionLoss(kind=loss.rec_loss, perceptual=perceptual, perceptual_weight=loss.perceptual_weight,
                             chroma_weight=loss.chroma_weight)
    disc = NLayerDiscriminator(in_channels=cfg.model.in_channels, channels=loss.disc_channels,
                               n_layers=loss.disc_layers, norm=loss.disc_norm)
    return rec, disc


@torch.no_grad()
def reconstruct_val(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(the validation batch, its reconstruction by the evaluated model in [-1, 1]), under the run's
    autocast, in eval mode (the model's mode restored after)."""
    model = ctx.model
    was_training = model.training
    model.eval()
    x = ctx.val_batch["x"]
    with ctx.autocast():
        recon = model(x).recon.float().clamp(-1, 1)
    model.train(was_training)
    return x, recon


@torch.no_grad()
def evaluate_images(ctx: EvalContext) -> dict[str, float]:
    """Reconstruct the validation batch: PSNR, SSIM (and LPIPS when the task's perceptual network is
    pretrained), and a reconstruction grid."""
    x, recon = reconstruct_val(ctx)
    lp = ctx.task.rec_loss.perceptual
    metrics = reconstruction_metrics(x, recon, lpips=lp if lp is not None and lp.pretrained else None)
    save_reconstruction_grid(x, recon, path=ctx.samples / f"recon-{ctx.step:07d}.png")
    return {f"eval/{k}": v for k, v in metrics.items()}


def image_report(model: nn.Module, req: ReportRequest, rate: Callable[..., Rate]) -> dict:
    """`aetk eval` of an image tokenizer: the request's flags to `eval.report.evaluate_on_data`."""
    return evaluate_on_data(model, req.data, rate=rate, resolution=req.resolution, n=req.n or 64, fit_n=req.fit_n,
                            precision=req.precision_audit, baselines=req.baselines, latent_bits=req.latent_bits,
                            tile=req.tile, lpips_weights=req.lpips_weights, inception_weights=req.inception_weights,
                            out_dir=req.out_dir, compute=req.precision, protocol=req.protocol,
                            fit_data=req.fit_data)
