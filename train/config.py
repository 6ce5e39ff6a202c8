"""Typed, validated run configuration.

A recipe is a YAML file that maps onto the dataclasses below. Loading checks every key: an unknown
key or a value of the wrong type is a `ConfigError` that names the dotted key and, for unknown keys,
the keys allowed there. Any key can be overridden from the command line as `dotted.key=value`
(the value is parsed as YAML, so `train.max_steps=10`, `model.block_out_channels=[32,64]`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not match the schema."""


@dataclass
class DataConfig:
    path: str = "builtin:skimage"
    """Image folder (recursive), a `datasets.save_to_disk` directory, or `builtin:skimage`."""
    resolution: int = 64
    """Side of the square training crop, pixels."""
    random_crop: bool = True
    """Random (train) or centre crop after resizing the shorter side to `resolution`."""
    random_flip: bool = True
    """Horizontal flips with probability 1/2."""
    image_column: str = "image"
    """Column holding images in a Hugging Face dataset."""
    builtin_size: int = 512
    """Number of crops in the built-in photo dataset."""
    val_path: str | None = None
    """Validation images; default: the `val` split of the built-in data, else the first training images."""
    val_size: int = 8
    """Images used for validation metrics and the reconstruction grid."""
    num_workers: int = 0
    """DataLoader worker processes per training process."""
    segment_seconds: float = 1.0
    """Audio (`model.kind: soundstream`): length of each training crop, seconds (validation clips too)."""
    silence_db: float = -40.0
    """Audio: a random crop quieter than this (dBFS RMS) is redrawn (a few times) so batches hold sound."""
    silence_prob: float = 0.0
    """Audio: the probability that a training crop ends in digital silence from a uniform cut point on
    (an utterance ending), so the codec learns to output silence for it: silence-aware crops
    otherwise never show it zeros, and it hums in them."""
    holdout_class: int | None = None
    """`builtin:digits`: leave this digit out of training (anomaly detection); validation keeps it."""

    def __post_init__(self) -> None:
        _check(self.holdout_class is None or 0 <= self.holdout_class <= 9, "data.holdout_class", "a digit 0-9 or null")
        _check(self.resolution >= 8 and self.resolution % 8 == 0, "data.resolution", "a multiple of 8, >= 8")
        _check(self.val_size >= 1, "data.val_size", ">= 1")
        _check(self.num_workers >= 0, "data.num_workers", ">= 0")
        _check(self.segment_seconds > 0, "data.segment_seconds", "> 0")
        _check(0.0 <= self.silence_prob <= 1.0, "data.silence_prob", "in [0, 1]")


@dataclass
class ClassicConfig:
    """`model.kind: classic`: the classic autoencoder family (`tokenizers_ae/classic/`). Each
    variant reads only the keys it needs; `train/classic_registry.py` maps variants to builders."""

    variant: Literal["linear", "mlp", "deep", "conv", "overcomplete", "denoising", "sparse_kl", "sparse_l1",
                     "topk", "contractive", "stacked", "recurrent", "vae", "cvae", "aae", "wae", "mae",
                     "sae"] = "mlp"
    """Which autoencoder (`beta-VAE` is `vae` with beta > 1)."""
    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    """MLP widths between the input and the code (mirrored in the decoder); `stacked`: one layer each,
    the last is the code; `recurrent`: the first is the RNN's hidden size."""
    code_size: int = 16
    """Units in the code (latent dimensions; SAE: dictionary size)."""
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    """Hidden nonlinearity of the MLPs."""
    channels: list[int] = field(default_factory=lambda: [16, 32])
    """`conv`: channels per stride-2 level."""
    sparsity_weight: float = 0.1
    """`sparse_kl`, `sparse_l1`, `overcomplete`: weight of the sparsity penalty (Ng's beta for KL)."""
    rho: float = 0.05
    """`sparse_kl`: target mean activation of each (sigmoid) code unit."""
    k: int = 4
    """`topk`, `sae`: active code units per input."""
    auxk_weight: float = 0.03125
    """`sae`: weight of the auxiliary top-k loss that revives dead latents (Gao et al.: 1/32)."""
    dead_steps: int = 200
    """`sae`: a latent that has not fired for this many training batches counts as dead."""
    corruption: Literal["gaussian", "masking", "salt_pepper"] = "gaussian"
    """`denoising`: additive Gaussian noise, masking (values set to 0, mid-range) or salt-and-pepper."""
    corruption_level: float = 0.5
    """`denoising`: noise std (on the [-1, 1] scale) or the fraction of values corrupted."""
    contractive_weight: float = 0.1
    """`contractive`: weight of the squared Frobenius norm of the encoder Jacobian."""
    pretrain_steps: int = 100
    """`stacked`: greedy steps per layer before fine-tuning the whole stack."""
    rnn: Literal["gru", "lstm"] = "gru"
    """`recurrent`: the cell of the encoder and decoder."""
    beta: float = 1.0
    """`vae`, `cvae`: weight of the KL term (beta-VAE when > 1)."""
    decoder_std: float = 0.2
    """`vae`, `cvae`: std of the Gaussian decoder p(x|z) on the [-1, 1] pixel scale (sets the ELBO)."""
    num_classes: int = 10
    """`cvae`: classes of the label the model is conditioned on."""
    adv_weight: float = 1.0
    """`aae`: weight of the generator's term from the latent discriminator."""
    disc_hidden: int = 64
    """`aae`: width of the latent discriminator's two hidden layers."""
    mmd_weight: float = 10.0
    """`wae`: weight of the MMD between the code distribution and the N(0, I) prior."""
    mask_ratio: float = 0.75
    """`mae`: fraction of patches hidden from the encoder."""
    patch_size: int = 4
    """`mae`: side of a square patch, pixels."""
    vit_dim: int = 64
    """`mae`: encoder width (the decoder is half as wide)."""
    vit_depth: int = 2
    """`mae`: encoder layers (the decoder has one)."""
    vit_heads: int = 4
    """`mae`: attention heads."""
    lm: str | None = None
    """`sae` on `builtin:lm-activations`: a local transformers causal-LM directory; null: a tiny
    randomly initialised GPT-2 over bytes (nothing downloaded)."""
    lm_layer: int = 1
    """`sae`: residual stream after this many transformer blocks (0: the embeddings)."""
    lm_tokens: int = 16384
    """`sae`: tokens of offline text (Python's stdlib docstrings) whose activations are collected."""

    def __post_init__(self) -> None:
        _check(self.code_size >= 1, "model.classic.code_size", ">= 1")
        _check(all(h >= 1 for h in self.hidden_sizes), "model.classic.hidden_sizes", "positive widths")
        _check(len(self.channels) >= 1, "model.classic.channels", "a non-empty list")
        _check(0 < self.rho < 1, "model.classic.rho", "in (0, 1)")
        _check(1 <= self.k <= self.code_size, "model.classic.k", f"in [1, code_size={self.code_size}]")
        _check(0 <= self.corruption_level, "model.classic.corruption_level", ">= 0")
        _check(self.corruption == "gaussian" or self.corruption_level <= 1, "model.classic.corruption_level",
               "<= 1 for masking and salt_pepper (a fraction)")
        _check(0 <= self.mask_ratio < 1, "model.classic.mask_ratio", "in [0, 1)")
        _check(self.decoder_std > 0, "model.classic.decoder_std", "> 0")
        for key in ("sparsity_weight", "auxk_weight", "contractive_weight", "beta", "adv_weight", "mmd_weight"):
            _check(getattr(self, key) >= 0, f"model.classic.{key}", ">= 0")
        _check(self.pretrain_steps >= 1 and self.dead_steps >= 1, "model.classic.pretrain_steps", ">= 1 (and dead_steps)")
        _check(self.lm_layer >= 0 and self.lm_tokens >= 64, "model.classic.lm_layer", ">= 0 (and lm_tokens >= 64)")


@dataclass
class DiTConfig:
    """`model.denoiser: dit`: diffusers' DiTTransformer2DModel (adaLN-zero) as the diffusion prior."""

    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 32
    """Width = num_heads x head_dim."""
    patch_size: int = 2
    """Side of the square patches the latent is cut into (tokens = (h / p) x (w / p))."""

    def __post_init__(self) -> None:
        _check(min(self.num_layers, self.num_heads, self.head_dim, self.patch_size) >= 1, "model.dit",
               "positive num_layers, num_heads, head_dim and patch_size")


@dataclass
class CodecConfig:
    """`model.kind: soundstream`: the causal SEANet encoder/decoder (`audio_codec/`). The residual
    VQ between them reads `model.rvq_levels`, `codebook_size`, `quantizer_dropout` and the VQ keys."""

    sample_rate: int = 24000
    """Model rate, Hz (audio is resampled to it on load)."""
    ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    """Decoder upsampling strides (the encoder uses them reversed); hop = their product."""
    n_filters: int = 32
    """Channels of the first stage, doubled at every downsampling (unless `stage_channels`)."""
    stage_channels: list[int] | None = None
    """Explicit widths, sample-rate stage first, len(ratios)+1 of them: compute sits in the early
    (high-rate) stages, parameters in the late ones, so a fast codec is narrow early, wide late."""
    dimension: int = 128
    """Latent channels per frame (the quantizer's input)."""
    lstm_layers: int = 2
    """LSTM layers at the bottleneck (0: none)."""
    n_residual_layers: int = 1
    """Residual units per stage (dilations dilation_base**j)."""
    dilation_base: int = 2

    def __post_init__(self) -> None:
        _check(self.sample_rate >= 1000, "model.codec.sample_rate", ">= 1000 Hz")
        _check(len(self.ratios) >= 1 and all(r >= 1 for r in self.ratios), "model.codec.ratios", "positive strides")
        _check(self.stage_channels is None or len(self.stage_channels) == len(self.ratios) + 1,
               "model.codec.stage_channels", "null or len(ratios)+1 widths")
        _check(self.dimension >= 1 and self.n_filters >= 1, "model.codec.dimension", ">= 1 (and n_filters)")
        _check(self.lstm_layers >= 0 and self.n_residual_layers >= 1, "model.codec.lstm_layers",
               ">= 0 (and n_residual_layers >= 1)")


@dataclass
class ARConfig:
    """`model.kind: ar_prior`: a transformers causal LM over the token shards of `aetk encode`
    (sequence layout: `latent_diffusion/ar_prior.py`)."""

    arch: Literal["gpt2", "llama"] = "gpt2"
    """`gpt2` (learned positions, GELU MLP) or `llama` (RoPE, SwiGLU, RMSNorm)."""
    width: int = 256
    """Hidden size."""
    layers: int = 6
    """Transformer blocks."""
    heads: int = 8
    """Attention heads (must divide width)."""
    dropout: float = 0.0
    """Dropout of attention (and, for gpt2, of embeddings and residuals)."""
    class_conditional: bool = True
    """Prepend a class token when the shards carry labels (manifest `num_classes`); false: unconditional."""
    top_k: int = 0
    """Sampling in eval steps and the default of `aetk sample --top-k`: keep the k likeliest codes (0: all)."""
    top_p: float = 1.0
    """Sampling: nucleus mass kept (1: all)."""
    temperature: float = 1.0
    """Sampling: logits divided by this (> 0)."""

    def __post_init__(self) -> None:
        _check(self.width >= 1 and self.layers >= 1 and self.heads >= 1, "model.ar.width", ">= 1 (and layers, heads)")
        _check(self.width % self.heads == 0, "model.ar.heads", f"a divisor of model.ar.width={self.width}")
        _check(0 <= self.dropout < 1, "model.ar.dropout", "in [0, 1)")
        _check(self.top_k >= 0, "model.ar.top_k", ">= 0")
        _check(0 < self.top_p <= 1, "model.ar.top_p", "in (0, 1]")
        _check(self.temperature > 0, "model.ar.temperature", "> 0")


@dataclass
class ModelConfig:
    kind: Literal["kl_vae", "vq_vae", "diffusion_prior", "classic", "soundstream", "ar_prior"] = "kl_vae"
    """Model family (`train/registry.py`): `kl_vae` (continuous latents), `vq_vae` (tokens; a
    VQ-GAN when trained with the discriminator on), `diffusion_prior` (a UNet or DiT over the
    latents of `aetk encode`: data.path is the encode directory, latent shape from its manifest;
    with an image source as data.path it is the pixel-space baseline) or
    `classic` (the classic autoencoder family; `model.classic` picks the variant) or
    `soundstream` (the neural audio codec; `model.codec` and the RVQ keys) or `ar_prior` (a causal
    LM over the token shards of `aetk encode`; `model.ar`)."""
    init_from: str | None = None
    """A model to fine-tune. KL-VAE: a diffusers `AutoencoderKL` directory (its architecture wins
    over the keys below) or a Stable Diffusion / latent-diffusion single `.safetensors` file
    (architecture from aetk's metadata in it, else from the keys below). Audio codec: an aetk codec
    run, checkpoint or model/ directory with the recipe's architecture (weights and codebooks
    carry over; the losses, data and schedule are the new recipe's), e.g. a GAN / mel phase after
    a waveform phase."""
    in_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    """Channels per resolution level; the downsampling factor is 2**(len-1)."""
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    """Self-attention in the lowest-resolution block (as Stable Diffusion's VAE)."""
    sample_posterior: bool = True
    """KL-VAE: train on z ~ q(z|x) (True) or on its mean."""
    quantizer: Literal["vq", "rvq", "fsq", "lfq"] = "vq"
    """VQ-VAE: codebook lookup, residual VQ, finite scalar quantization or lookup-free quantization."""
    rvq_levels: int = 4
    """RVQ: number of residual quantizers (each with `codebook_size` codes and the VQ options)."""
    quantizer_dropout: float = 0.0
    """RVQ: probability of training with a random number of levels (SoundStream's bitrate scalability)."""
    codebook_size: int = 1024
    """VQ: number of codes."""
    codebook_dim: int | None = None
    """VQ: factorised lookup in this many dimensions (ViT-VQGAN/LlamaGen); None: latent_channels."""
    vq_ema_decay: float | None = 0.99
    """VQ: EMA codebook updates (None: learned through the codebook loss)."""
    dead_code_threshold: float = 0.0
    """VQ: restart codes whose EMA cluster size (or recent usage) falls below this from batch vectors.
    With EMA the cluster size is vectors per forward, ~ (vectors per batch) / codebook_size under
    uniform use, so the threshold must sit well below that (checked for `soundstream`)."""
    kmeans_init: bool = False
    """VQ: initialise the codebook with k-means on the first batch."""
    cosine: bool = False
    """VQ: l2-normalised codes and lookup by cosine similarity."""
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    """FSQ: levels per dimension (codebook size = product)."""
    lfq_bits: int = 10
    """LFQ: bits per token (codebook size 2**bits)."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """Diffusion prior: what the UNet predicts."""
    num_train_timesteps: int = 1000
    """Diffusion prior: DDPM steps (Stable Diffusion's scaled-linear betas)."""
    denoiser: Literal["unet", "dit"] = "unet"
    """Diffusion prior: diffusers' UNet2DModel (block_out_channels, layers_per_block, norm_num_groups,
    mid_block_attention) or DiT (`model.dit`)."""
    dit: DiTConfig = field(default_factory=DiTConfig)
    """`model.denoiser: dit`: the transformer's size and patch."""
    beta_schedule: Literal["auto", "scaled_linear", "linear"] = "auto"
    """Diffusion prior: noise schedule; auto = Stable Diffusion's scaled_linear for latents, DDPM's
    linear for pixels."""
    class_conditional: bool = False
    """Diffusion prior: condition on the class label of each item (the encode manifest's
    `num_classes`: class sub-folders, a `label` column, builtin:digits)."""
    cond_dropout: float = 0.1
    """Diffusion prior: fraction of labels replaced by the null class in training, so one model
    also predicts unconditionally (classifier-free guidance)."""
    guidance_scale: float = 3.0
    """Diffusion prior: classifier-free guidance for eval samples of a class-conditional prior."""
    first_stage: str | None = None
    """Diffusion prior: the KL-VAE (run dir, diffusers dir or single file) whose decoder turns sampled
    latents into images for eval grids and `aetk sample`. AR prior: the VQ tokenizer or audio codec
    that made the tokens."""
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    """`model.kind: classic`: the variant and its settings."""
    codec: CodecConfig = field(default_factory=CodecConfig)
    """`model.kind: soundstream`: the audio codec's encoder/decoder."""
    ar: ARConfig = field(default_factory=ARConfig)
    """`model.kind: ar_prior`: the transformer and its sampling."""

    def __post_init__(self) -> None:
        _check(len(self.block_out_channels) >= 1, "model.block_out_channels", "a non-empty list")
        for c in self.block_out_channels:
            _check(c % self.norm_num_groups == 0, "model.block_out_channels",
                   f"multiples of model.norm_num_groups={self.norm_num_groups} (got {self.block_out_channels})")
        _check(self.latent_channels >= 1, "model.latent_channels", ">= 1")
        _check(0.0 <= self.cond_dropout < 1.0, "model.cond_dropout", "in [0, 1)")
        _check(self.layers_per_block >= 1, "model.layers_per_block", ">= 1")


@dataclass
class LossConfig:
    rec_loss: Literal["l1", "l2"] = "l1"
    """Pixel reconstruction loss, mean over values."""
    perceptual_weight: float = 1.0
    """Weight of LPIPS (0 disables it and skips the network)."""
    perceptual_backbone: Literal["vgg", "random"] = "vgg"
    """`vgg`: ImageNet VGG16 weights from `perceptual_weights` or torchvision's cache; `random`: an
    untrained backbone (tests, smoke runs: the loss then means little)."""
    perceptual_weights: str | None = None
    """Path to torchvision's `vgg16-397923af.pth` (or any VGG16 state dict) for `vgg`."""
    kl_weight: float = 1e-6
    """KL weight. Both terms are divided by the number of input values, so this has the meaning
    of latent-diffusion's `kl_weight` (which summed both over values)."""
    learn_logvar: bool = False
    """Learned scalar log-variance on the reconstruction term (latent-diffusion's `logvar`)."""
    commitment_weight: float = 0.25
    """VQ/LFQ commitment loss weight (beta)."""
    codebook_weight: float = 1.0
    """VQ codebook loss weight (only without EMA updates)."""
    entropy_weight: float = 0.1
    """LFQ entropy loss weight."""
    disc_start: int = 5001
    """Optimizer step at which the discriminator starts; before it no discriminator work is done."""
    disc_weight: float = 0.5
    """Scale of the adaptive adversarial weight."""
    adaptive_weight: bool = True
    """Balance the adversarial gradient against the reconstruction gradient at the decoder's last
    layer (taming-transformers). False: the weight is `disc_weight`."""
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    """Discriminator loss: hinge or non-saturating (softplus)."""
    disc_layers: int = 3
    disc_channels: int = 64
    disc_norm: Literal["batch", "group", "none"] = "batch"
    """Normalisation in the PatchGAN. `batch` (taming's choice) keeps per-process statistics under
    data parallelism; `group` makes multi-process runs match single-process ones exactly."""
    disc_ramp_steps: int = 0
    """Ramp the adversarial weight linearly from 0 to 1 over this many steps after disc_start."""
    max_d_weight: float = 1e4
    """Clamp of the adaptive adversarial weight (taming's 1e4)."""
    r1_weight: float = 0.0
    """R1 penalty gamma/2 * E||grad_x D(x_real)||^2 on the discriminator (0: off)."""
    mel_weight: float = 15.0
    """Audio: multi-scale mel L1 (log + magnitude, DAC's windows 32..2048) weight."""
    stft_weight: float = 1.0
    """Audio: multi-scale log-STFT + spectral convergence weight."""
    waveform_weight: float = 0.1
    """Audio: waveform L1 weight."""
    feature_weight: float = 2.0
    """Feature-matching weight (discriminators that return features: the audio ones)."""
    audio_discriminators: list[Literal["msstft", "mpd"]] = field(default_factory=lambda: ["msstft", "mpd"])
    """Audio: EnCodec's multi-scale STFT discriminator and/or HiFi-GAN's multi-period one."""
    mpd_channels: list[int] = field(default_factory=lambda: [32, 128, 512, 1024, 1024])
    """Audio: channels of each multi-period sub-discriminator (HiFi-GAN's; narrower trains faster)."""
    guard: Literal["off", "warn", "lower", "stop"] = "warn"
    """What to do when the GAN goes wrong after onset (reconstruction degrades beyond
    `guard_rec_increase`, or the discriminator is saturated for `guard_saturation_steps`): log a
    warning, halve the adversarial weight, or stop the run with a message."""
    guard_window: int = 50
    """Steps averaged for the reconstruction baseline (just before onset) and for the current value."""
    guard_rec_increase: float = 0.25
    """Relative increase of the reconstruction loss over its pre-onset baseline that trips the guard."""
    guard_saturation_steps: int = 200
    """Consecutive steps with the discriminator >= 99% right on real and fake that trip the guard."""

    def __post_init__(self) -> None:
        for k in ("perceptual_weight", "kl_weight", "disc_weight", "r1_weight", "guard_rec_increase", "mel_weight",
                  "stft_weight", "waveform_weight", "feature_weight"):
            _check(getattr(self, k) >= 0, f"loss.{k}", ">= 0")
        _check(self.disc_start >= 0, "loss.disc_start", ">= 0")
        _check(self.disc_ramp_steps >= 0, "loss.disc_ramp_steps", ">= 0")
        _check(self.guard_window >= 1 and self.guard_saturation_steps >= 1, "loss.guard_window",
               ">= 1 (and guard_saturation_steps >= 1)")


@dataclass
class TrainConfig:
    batch_size: int = 8
    """Global batch per optimizer step (all processes together, before accumulation)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; each holds batch_size/(processes*grad_accum) images."""
    max_steps: int = 1000
    lr: float = 4.5e-6
    disc_lr: float | None = None
    """Discriminator learning rate (default: `lr`)."""
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    """Clip each phase's gradient norm (None: no clipping)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    """Autocast precision; weights and optimizer state stay fp32."""
    ema_decay: float | None = 0.999
    """EMA of the generator weights, used for eval and export (None: off)."""
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite: int = 10
    """Stop after this many non-finite steps in a row (each is skipped)."""
    progress: bool = True
    """Show a progress bar."""
    latent_stats_images: int = 256
    """Training images encoded at the end to measure the latent scaling factor written to model/."""

    def __post_init__(self) -> None:
        for k in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every",
                  "checkpoint_every", "keep_checkpoints", "max_nonfinite"):
            _check(getattr(self, k) >= 1, f"train.{k}", ">= 1")
        _check(len(self.betas) == 2, "train.betas", "two numbers")
        _check(self.lr > 0, "train.lr", "> 0")


@dataclass
class Config:
    output_dir: str = "runs/default"
    """Run directory: config.yaml, checkpoints/, model/, metrics.jsonl, samples/, logs/."""
    seed: int = 0
    resume: str = "auto"
    """`auto`: continue from the newest complete checkpoint in output_dir; `never`; or a checkpoint path."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        m = self.model
        if m.kind == "soundstream" and m.vq_ema_decay is not None and m.dead_code_threshold > 0:
            # An EMA cluster size tends to the code's vectors per forward, so under uniform use
            # to (frames per forward) / codebook_size; at or above that threshold every code is
            # restarted every step and no codebook ever settles.
            hop = math.prod(m.codec.ratios)
            frames = math.ceil(round(self.data.segment_seconds * m.codec.sample_rate) / hop)
            mean_size = self.train.batch_size / self.train.grad_accum * frames / m.codebook_size
            _check(m.dead_code_threshold < mean_size, "model.dead_code_threshold",
                   f"below the mean EMA cluster size, batch_size / grad_accum * frames per segment / "
                   f"codebook_size = {mean_size:.3g} (else every code is restarted every step)")


def _check(ok: bool, key: str, want: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {want}")


# --- loading ------------------------------------------------------------------------------------

def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "no" in allowed:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept numeric strings rather than surprise people.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: "
                          f"{', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected dotted.key=value")
    key, text = override.split("=", 1)
    value = yaml.safe_load(text) if text != "" else None
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def config_from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for o in overrides:
        _apply_override(raw, o)
    return _build(Config, raw, "")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Load a YAML recipe, apply `dotted.key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return config_from_dict(raw, overrides)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
