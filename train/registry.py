"""The explicit table from recipe names to builders: no import strings in YAML."""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL
from torch import nn

from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.losses.reconstruction import ReconstructionLoss
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from train.config import Config, ConfigError
from train.tasks import AutoencoderGANTask


def build_kl_vae(cfg: Config) -> KLVAE:
    m = cfg.model
    if m.init_from:
        path = Path(m.init_from)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.init_from: {path} is not a diffusers AutoencoderKL directory "
                              "(no config.json)")
        vae = AutoencoderKL.from_pretrained(path)  # loads safetensors; returns eval mode
        vae.train()
    else:
        vae = build_autoencoder_kl(
            in_channels=m.in_channels, block_out_channels=m.block_out_channels,
            layers_per_block=m.layers_per_block, latent_channels=m.latent_channels,
            norm_num_groups=m.norm_num_groups, mid_block_attention=m.mid_block_attention,
            sample_size=cfg.data.resolution)
    return KLVAE(vae, sample_posterior=m.sample_posterior)


MODELS = {"kl_vae": build_kl_vae}
"""model.kind -> builder(Config) -> nn.Module returning AEOutput."""

REG_WEIGHTS = {"kl_vae": lambda cfg: {"kl": cfg.loss.kl_weight}}
"""model.kind -> the weight of each regulariser the model reports."""


def build_model(cfg: Config) -> nn.Module:
    return MODELS[cfg.model.kind](cfg)


def build_perceptual(cfg: Config) -> LPIPS | None:
    if cfg.loss.perceptual_weight <= 0:
        return None
    return LPIPS(backbone=cfg.loss.perceptual_backbone, weights_path=cfg.loss.perceptual_weights)


def build_task(cfg: Config, model: nn.Module | None = None) -> AutoencoderGANTask:
    loss = cfg.loss
    model = model if model is not None else build_model(cfg)
    rec = ReconstructionLoss(kind=loss.rec_loss, perceptual=build_perceptual(cfg),
                             perceptual_weight=loss.perceptual_weight)
    # Always built (it costs memory, not time, before disc_start) so a run resumed with a larger
    # max_steps finds the same checkpoint layout.
    disc = NLayerDiscriminator(in_channels=cfg.model.in_channels, channels=loss.disc_channels,
                               n_layers=loss.disc_layers, norm=loss.disc_norm)
    t = cfg.train
    return AutoencoderGANTask(
        autoencoder=model, rec_loss=rec, discriminator=disc, reg_weights=REG_WEIGHTS[cfg.model.kind](cfg),
        lr=t.lr, disc_lr=t.disc_lr, betas=t.betas, weight_decay=t.weight_decay,
        disc_start=loss.disc_start, disc_weight=loss.disc_weight, adaptive=loss.adaptive_weight,
        disc_loss=loss.disc_loss, learn_logvar=loss.learn_logvar)
