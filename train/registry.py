"""The explicit table from recipe names to builders: no import strings in YAML."""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL
from safetensors import safe_open
from torch import nn

from latent_diffusion.diffusion_prior import DiffusionPrior, build_dit, build_unet
from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.export import load_sd_single_file
from tokenizers_ae.export.sd_single_file import CONFIG_METADATA_KEY
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.losses.reconstruction import ReconstructionLoss
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from tokenizers_ae.models.vq_vae import VQVAE, build_vq_backbone
from tokenizers_ae.quantizers import FSQ, LFQ, ResidualVQ, VectorQuantizer
from train.config import Config, ConfigError, config_to_dict
from train.tasks import AutoencoderGANTask


def _fresh_autoencoder_kl(cfg: Config) -> AutoencoderKL:
    m = cfg.model
    return build_autoencoder_kl(
        in_channels=m.in_channels, block_out_channels=m.block_out_channels,
        layers_per_block=m.layers_per_block, latent_channels=m.latent_channels,
        norm_num_groups=m.norm_num_groups, mid_block_attention=m.mid_block_attention,
        sample_size=cfg.data.resolution)


def build_kl_vae(cfg: Config) -> KLVAE:
    m = cfg.model
    if not m.init_from:
        return KLVAE(_fresh_autoencoder_kl(cfg), sample_posterior=m.sample_posterior)
    path = Path(m.init_from)
    if path.is_file() and path.suffix == ".safetensors":
        # An SD / latent-diffusion single file: its architecture comes from the file's metadata when
        # aetk wrote it, else from the recipe's model keys (a third-party SD VAE: keep the defaults
        # of configs/kl-f8.yaml).
        with safe_open(str(path), framework="pt") as f:
            has_config = CONFIG_METADATA_KEY in (f.metadata() or {})
        vae = load_sd_single_file(path, config=None if has_config else dict(_fresh_autoencoder_kl(cfg).config))
    elif (path / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(path)  # its architecture wins over the recipe's keys
    else:
        raise ConfigError(f"model.init_from: {path} is neither a diffusers AutoencoderKL directory "
                          "(with config.json) nor a .safetensors single file")
    vae.train()  # diffusers loaders return eval mode
    return KLVAE(vae, sample_posterior=m.sample_posterior)


def build_quantizer(cfg: Config):
    m = cfg.model
    vq = dict(codebook_size=m.codebook_size, dim=m.latent_channels, ema_decay=m.vq_ema_decay,
              dead_code_threshold=m.dead_code_threshold, kmeans_init=m.kmeans_init, cosine=m.cosine,
              codebook_dim=m.codebook_dim, commitment_weight=cfg.loss.commitment_weight)
    if m.quantizer == "vq":
        return VectorQuantizer(**vq)
    if m.quantizer == "rvq":
        return ResidualVQ(num_quantizers=m.rvq_levels, quantizer_dropout=m.quantizer_dropout, **vq)
    if m.quantizer == "fsq":
        return FSQ(levels=m.fsq_levels, dim=m.latent_channels)
    return LFQ(dim=m.latent_channels, codebook_bits=m.lfq_bits, entropy_weight=cfg.loss.entropy_weight,
               commitment_weight=cfg.loss.commitment_weight)


def build_vq_vae(cfg: Config) -> VQVAE:
    m = cfg.model
    if m.init_from:
        raise ConfigError("model.init_from is not supported for model.kind=vq_vae yet")
    backbone = build_vq_backbone(
        in_channels=m.in_channels, block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
        latent_channels=m.latent_channels, norm_num_groups=m.norm_num_groups,
        mid_block_attention=m.mid_block_attention, codebook_size=m.codebook_size, sample_size=cfg.data.resolution)
    model = VQVAE(backbone, build_quantizer(cfg))
    model.recipe = config_to_dict(cfg)["model"]  # lets a native export rebuild the same model
    return model


def build_codec(cfg: Config) -> nn.Module:
    """The SoundStream codec: causal SEANets around a residual VQ with the recipe's VQ options."""
    from audio_codec.model import build_soundstream

    m, c = cfg.model, cfg.model.codec
    model = build_soundstream(
        sample_rate=c.sample_rate, n_filters=c.n_filters, ratios=tuple(c.ratios), dimension=c.dimension,
        lstm_layers=c.lstm_layers, stage_channels=c.stage_channels, n_residual_layers=c.n_residual_layers,
        dilation_base=c.dilation_base, num_quantizers=m.rvq_levels, codebook_size=m.codebook_size,
        quantizer_dropout=m.quantizer_dropout, ema_decay=m.vq_ema_decay, dead_code_threshold=m.dead_code_threshold,
        kmeans_init=m.kmeans_init, cosine=m.cosine, codebook_dim=m.codebook_dim,
        commitment_weight=cfg.loss.commitment_weight)
    model.recipe = config_to_dict(cfg)["model"]  # lets the native export rebuild the same model
    if m.init_from:
        _init_codec_from(model, m.init_from)
    return model


def _init_codec_from(model: nn.Module, path: str) -> None:
    """Load an aetk codec's weights and codebooks into `model` (same architecture), in place."""
    from train.codec import is_codec
    from train.export import load_codec

    if not is_codec(path):
        raise ConfigError(f"model.init_from: {path} is not an aetk audio codec run, checkpoint or model/ directory")
    try:
        model.load_state_dict(load_codec(path, weights="ema").state_dict())
    except RuntimeError as e:  # missing / unexpected keys or other shapes, listed by torch
        raise ConfigError(f"model.init_from: {path} has another architecture than this recipe: {e}") from None


def build_audio_losses(cfg: Config):
    """Reconstruction loss and discriminator of the audio codec (mel + STFT + L1; MS-STFT + MPD)."""
    from audio_codec.discriminators import CombinedDiscriminator, MultiPeriodDiscriminator, MultiScaleSTFTDiscriminator
    from audio_codec.losses import AudioReconstructionLoss, MultiScaleMelLoss, MultiScaleSTFTLoss

    loss = cfg.loss
    rec = AudioReconstructionLoss(
        mel=MultiScaleMelLoss(sample_rate=cfg.model.codec.sample_rate), stft=MultiScaleSTFTLoss(),
        mel_weight=loss.mel_weight, stft_weight=loss.stft_weight, waveform_weight=loss.waveform_weight)
    table = {"msstft": lambda: MultiScaleSTFTDiscriminator(filters=loss.disc_channels),
             "mpd": lambda: MultiPeriodDiscriminator(channels=tuple(loss.mpd_channels))}
    discs = [table[name]() for name in dict.fromkeys(loss.audio_discriminators)]
    return rec, (CombinedDiscriminator(discs) if discs else None)


def build_classic(cfg: Config) -> nn.Module:
    from train.classic_registry import build_classic as build  # the variant table lives there

    return build(cfg)


MODELS = {"kl_vae": build_kl_vae, "vq_vae": build_vq_vae, "diffusion_prior": lambda cfg: build_prior(cfg),
          "classic": build_classic, "soundstream": build_codec, "ar_prior": lambda cfg: build_ar_prior(cfg)}
"""model.kind -> builder(Config) -> nn.Module returning AEOutput."""

REG_WEIGHTS = {
    "kl_vae": lambda cfg: {"kl": cfg.loss.kl_weight},
    "vq_vae": lambda cfg: {"vq/commitment": cfg.loss.commitment_weight, "vq/codebook": cfg.loss.codebook_weight,
                           "lfq/commitment": cfg.loss.commitment_weight, "lfq/entropy": cfg.loss.entropy_weight},
    "soundstream": lambda cfg: {"vq/commitment": cfg.loss.commitment_weight, "vq/codebook": cfg.loss.codebook_weight},
}
"""model.kind -> the weight of each regulariser the model reports."""


def build_model(cfg: Config) -> nn.Module:
    return MODELS[cfg.model.kind](cfg)


def build_perceptual(cfg: Config) -> LPIPS | None:
    if cfg.loss.perceptual_weight <= 0:
        return None
    return LPIPS(backbone=cfg.loss.perceptual_backbone, weights_path=cfg.loss.perceptual_weights)


def build_prior(cfg: Config) -> DiffusionPrior:
    """A UNet or DiT sized to the data: encoded latents (their manifest's shape and classes) or, for
    the pixel-space baseline, the images themselves."""
    from train.data.latents import LatentItems, prior_items

    m = cfg.model
    items = prior_items(cfg)
    latent = isinstance(items, LatentItems)
    c, h, w = items.latent_shape
    if m.class_conditional and not items.num_classes:
        raise ConfigError(f"model.class_conditional: {cfg.data.path} has no class labels (encode a labelled "
                          "source: class sub-folders, a `label` column or builtin:digits)")
    k = items.num_classes if m.class_conditional else 0
    if m.denoiser == "dit":
        d = m.dit
        if h % d.patch_size or w % d.patch_size:
            raise ConfigError(f"model.dit.patch_size: {d.patch_size} does not divide the {h}x{w} latent")
        net = build_dit(latent_channels=c, sample_size=h, num_layers=d.num_layers, num_heads=d.num_heads,
                        head_dim=d.head_dim, patch_size=d.patch_size, num_classes=k)
    else:
        net = build_unet(latent_channels=c, sample_size=h, block_out_channels=m.block_out_channels,
                         layers_per_block=m.layers_per_block, norm_num_groups=m.norm_num_groups,
                         attention=m.mid_block_attention, num_classes=k)
    schedule = m.beta_schedule if m.beta_schedule != "auto" else ("scaled_linear" if latent else "linear")
    return DiffusionPrior(net, prediction_type=m.prediction_type, num_train_timesteps=m.num_train_timesteps,
                          beta_schedule=schedule, num_classes=k, clip_sample=not latent)


def build_ar_prior(cfg: Config) -> nn.Module:
    from train.ar_task import build_ar_prior as build  # the layout comes from the token manifest

    return build(cfg)


def build_task(cfg: Config, model: nn.Module | None = None):
    if cfg.model.kind == "ar_prior":
        from train.ar_task import build_ar_task

        return build_ar_task(cfg, model)
    if cfg.model.kind == "classic":
        from train.classic_registry import build_classic_task

        return build_classic_task(cfg, model)
    if cfg.model.kind == "diffusion_prior":
        from train.prior_task import DiffusionPriorTask

        t = cfg.train
        return DiffusionPriorTask(prior=model if model is not None else build_prior(cfg), lr=t.lr, betas=t.betas,
                                  weight_decay=t.weight_decay, cond_dropout=cfg.model.cond_dropout)
    loss = cfg.loss
    model = model if model is not None else build_model(cfg)
    # The discriminator is always built (it costs memory, not time, before disc_start) so a run
    # resumed with a larger max_steps finds the same checkpoint layout.
    if cfg.model.kind == "soundstream":
        rec, disc = build_audio_losses(cfg)
    else:
        rec = ReconstructionLoss(kind=loss.rec_loss, perceptual=build_perceptual(cfg),
                                 perceptual_weight=loss.perceptual_weight)
        disc = NLayerDiscriminator(in_channels=cfg.model.in_channels, channels=loss.disc_channels,
                                   n_layers=loss.disc_layers, norm=loss.disc_norm)
    t = cfg.train
    return AutoencoderGANTask(
        autoencoder=model, rec_loss=rec, discriminator=disc, reg_weights=REG_WEIGHTS[cfg.model.kind](cfg),
        lr=t.lr, disc_lr=t.disc_lr, betas=t.betas, weight_decay=t.weight_decay,
        disc_start=loss.disc_start, disc_weight=loss.disc_weight, adaptive=loss.adaptive_weight,
        disc_loss=loss.disc_loss, learn_logvar=loss.learn_logvar, ramp_steps=loss.disc_ramp_steps,
        max_d_weight=loss.max_d_weight, r1_weight=loss.r1_weight, feature_weight=loss.feature_weight)
