"""Typed, validated run configuration: the loading machinery and the sections families share.

A recipe is a YAML file with the sections `data`, `model`, `loss` and `train`. `train` is the
loop's and the same for every family; `data`, `model` and `loss` are the family's own, chosen by
`model.kind` (`train/families/`), so a key of another family is an error that says whose key it
is (`train/recipe.py` loads recipes). Each section is a dataclass with a docstring per field;
loading checks every key: an unknown key or a value of the wrong type is a `ConfigError` naming
the dotted key. This module imports nothing heavy, so a bad recipe fails in a fraction of a second.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A recipe or override that does not match the schema."""


class RunError(RuntimeError):
    """A run stopped for a reason its user can act on; the message says how (the command line
    prints it as one line, without a traceback)."""


def check(ok: bool, key: str, want: str) -> None:
    """ConfigError `key: must be want` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: must be {want}")


# --- data sections ----------------------------------------------------------------------------------------

@dataclass
class DataBase:
    path: str = "builtin:skimage"
    """Where the training data is (each family's `data` section says what it may be)."""
    val_path: str | None = None
    """Validation data; default: the built-in data's `val` split, else the first training items."""
    val_size: int = 8
    """Items used for validation metrics and the grids or clips, evenly spaced over the validation set."""
    num_workers: int = 0
    """DataLoader worker processes per training process."""

    def __post_init__(self) -> None:
        check(self.val_size >= 1, "data.val_size", ">= 1")
        check(self.num_workers >= 0, "data.num_workers", ">= 0")


@dataclass
class ImageData(DataBase):
    """Images: a folder (recursive, class sub-folders give labels), WebDataset-style `.tar` shards
    (a file or a folder of them), a `datasets.save_to_disk` directory, `builtin:skimage` (crops of
    scikit-image's photos) or `builtin:digits` (scikit-learn's 8x8 digits, labelled)."""

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
    holdout_class: int | None = None
    """`builtin:digits`: leave this digit out of training (anomaly detection); validation keeps it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.holdout_class is None or 0 <= self.holdout_class <= 9, "data.holdout_class", "a digit 0-9 or null")
        check(self.resolution >= 8 and self.resolution % 8 == 0, "data.resolution", "a multiple of 8, >= 8")
        check(self.builtin_size >= 1, "data.builtin_size", ">= 1")


@dataclass
class AudioData(DataBase):
    """Audio: a folder of WAV / FLAC / OGG files (recursive), resampled to the model's rate."""

    path: str = "data/speech/train"
    segment_seconds: float = 1.0
    """Length of each training crop, seconds (validation clips too)."""
    random_crop: bool = True
    """Random (train) or centre crops."""
    silence_db: float = -40.0
    """A random crop quieter than this (dBFS RMS) is redrawn (a few times) so batches hold sound."""
    silence_prob: float = 0.0
    """The probability that a training crop ends in digital silence from a uniform cut point on
    (an utterance ending), so the codec learns to output silence for it: silence-aware crops
    otherwise never show it zeros, and it hums in them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.segment_seconds > 0, "data.segment_seconds", "> 0")
        check(0.0 <= self.silence_prob <= 1.0, "data.silence_prob", "in [0, 1]")


@dataclass
class ShardData(DataBase):
    """The output directory of `aetk encode` (latent or token shards and their manifest)."""

    path: str = "latents"


# --- shared model parts ---------------------------------------------------------------------------------

@dataclass
class QuantizerConfig:
    """`model.quantizer`: the bottleneck of a discrete tokenizer (`tokenizers_ae/quantizers/`)."""

    type: Literal["vq", "rvq", "fsq", "lfq"] = "vq"
    """Codebook lookup, residual VQ, finite scalar quantization or lookup-free quantization."""
    codebook_size: int = 1024
    """vq, rvq: codes per codebook."""
    codebook_dim: int | None = None
    """vq, rvq: factorised lookup in this many dimensions (ViT-VQGAN/LlamaGen); null: the latent's."""
    ema_decay: float | None = 0.99
    """vq, rvq: EMA codebook updates (null: learned through the codebook loss)."""
    dead_code_threshold: float = 0.0
    """vq, rvq: restart codes whose EMA cluster size (or recent usage) falls below this from batch
    vectors. With EMA the cluster size is vectors per forward, ~ (vectors per batch) / codebook_size
    under uniform use, so the threshold must sit well below that (checked for audio codecs)."""
    kmeans_init: bool = False
    """vq, rvq: initialise each codebook with k-means on the first batch."""
    cosine: bool = False
    """vq, rvq: l2-normalised codes and lookup by cosine similarity."""
    levels: int = 4
    """rvq: residual codebooks, each with `codebook_size` codes."""
    dropout: float = 0.0
    """rvq: probability of training with a random number of levels (SoundStream's bitrate scalability)."""
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    """fsq: levels per dimension (codebook size = their product)."""
    lfq_bits: int = 10
    """lfq: bits per token (codebook size 2**bits)."""

    def __post_init__(self) -> None:
        check(self.codebook_size >= 2, "model.quantizer.codebook_size", ">= 2")
        check(self.levels >= 1, "model.quantizer.levels", ">= 1")
        check(0.0 <= self.dropout <= 1.0, "model.quantizer.dropout", "in [0, 1]")
        check(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "model.quantizer.ema_decay", "in [0, 1) or null")
        check(self.dead_code_threshold >= 0, "model.quantizer.dead_code_threshold", ">= 0")
        check(len(self.fsq_levels) >= 1 and min(self.fsq_levels) >= 2, "model.quantizer.fsq_levels",
              "a non-empty list of integers >= 2")
        check(1 <= self.lfq_bits <= 62, "model.quantizer.lfq_bits", "in [1, 62]")

    def vq_kwargs(self, dim: int) -> dict:
        """The keyword arguments of each `VectorQuantizer` (every level of a residual VQ)."""
        return dict(codebook_size=self.codebook_size, dim=dim, ema_decay=self.ema_decay,
                    dead_code_threshold=self.dead_code_threshold, kmeans_init=self.kmeans_init, cosine=self.cosine,
                    codebook_dim=self.codebook_dim)


@dataclass
class ImageBackbone:
    """The diffusers encoder/decoder of the image tokenizers (AutoencoderKL / VQModel blocks)."""

    in_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    """Channels per resolution level; the downsampling factor is 2**(len-1)."""
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_attention: bool = True
    """Self-attention in the lowest-resolution block (as Stable Diffusion's VAE)."""

    def __post_init__(self) -> None:
        check(len(self.block_out_channels) >= 1, "model.block_out_channels", "a non-empty list")
        for c in self.block_out_channels:
            check(c % self.norm_num_groups == 0, "model.block_out_channels",
                  f"multiples of model.norm_num_groups={self.norm_num_groups} (got {self.block_out_channels})")
        check(self.latent_channels >= 1, "model.latent_channels", ">= 1")
        check(self.layers_per_block >= 1, "model.layers_per_block", ">= 1")
        check(self.in_channels >= 1, "model.in_channels", ">= 1")

    @property
    def factor(self) -> int:
        """Downsampling factor, pixels per latent position along a side."""
        return 2 ** (len(self.block_out_channels) - 1)

    def instance_norm_warning(self) -> str | None:
        """Why `norm_num_groups` is a poor choice here, or None. A group of one channel is instance norm: the
        decoder's last norm then sets each channel's mean over the image to zero, so a flat or smooth image's
        colour and brightness cannot pass through it exactly. Legal, so a warning and not an error."""
        narrow = min(self.block_out_channels)
        if narrow // self.norm_num_groups > 1:
            return None
        fit = next((g for g in (32, 16, 8, 4, 2) if narrow % g == 0 and narrow // g >= 4), 1)
        return (f"model.norm_num_groups={self.norm_num_groups} gives the {narrow}-channel level one channel per "
                f"group (instance norm), which erases each image's colour mean before the output; "
                f"model.norm_num_groups={fit} keeps 4 or more channels per group, as Stable Diffusion's VAE does "
                f"(held-out PSNR 27.2 -> 28.8 dB, configs/photo-kl-f4-64.yaml)")


# --- shared loss parts ----------------------------------------------------------------------------------

@dataclass
class GANLoss:
    """The adversarial phase and its guardrails, shared by every autoencoder trained with a discriminator."""

    disc_start: int = 5001
    """Optimizer step at which the discriminator starts; before it no discriminator work is done."""
    disc_warmup_steps: int = 0
    """Steps the discriminator trains alone from disc_start before the generator sees adversarial
    gradients (then the ramp and the guard start): a GAN phase on a released model, which ships no
    discriminator, then begins against a discriminator that already tells real from reconstructed."""
    disc_weight: float = 0.5
    """Scale of the adaptive adversarial weight."""
    adaptive_weight: bool = True
    """Balance the adversarial gradient against the reconstruction gradient at the decoder's last
    layer (taming-transformers). False: the weight is `disc_weight`."""
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    """Discriminator loss: hinge or non-saturating (softplus)."""
    disc_ramp_steps: int = 0
    """Ramp the adversarial weight linearly from 0 to 1 over this many steps after disc_start."""
    max_d_weight: float = 1e4
    """Clamp of the adaptive adversarial weight (taming's 1e4)."""
    r1_weight: float = 0.0
    """R1 penalty gamma/2 * E||grad_x D(x_real)||^2 on the discriminator (0: off)."""
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
        for k in ("disc_weight", "r1_weight", "guard_rec_increase"):
            check(getattr(self, k) >= 0, f"loss.{k}", ">= 0")
        check(self.disc_start >= 0, "loss.disc_start", ">= 0")
        check(self.disc_ramp_steps >= 0, "loss.disc_ramp_steps", ">= 0")
        check(self.disc_warmup_steps >= 0, "loss.disc_warmup_steps", ">= 0")
        check(self.guard_window >= 1 and self.guard_saturation_steps >= 1, "loss.guard_window",
              ">= 1 (and guard_saturation_steps >= 1)")


@dataclass
class ImageGANLoss(GANLoss):
    """Pixel reconstruction + LPIPS + a PatchGAN: the loss of the image tokenizers (taming's)."""

    rec_loss: Literal["l1", "l2"] = "l1"
    """Pixel reconstruction loss, mean over values."""
    perceptual_weight: float = 1.0
    """Weight of the perceptual term, LPIPS or the distance `perceptual_backbone` names (0 disables it)."""
    perceptual_backbone: Literal["vgg", "random", "haarpsi", "ms_ssim"] = "vgg"
    """`vgg`: LPIPS with ImageNet VGG16 weights from `perceptual_weights` or torchvision's cache;
    `random`: an untrained backbone (tests, smoke runs: the loss then means little); `haarpsi`: no
    network, 1 - HaarPSI (piq), a weight-free perceptual term (images of at least 16 pixels);
    `ms_ssim`: no network, 1 - MS-SSIM with the scales `aetk eval` uses (images of at least 20 pixels)."""
    perceptual_weights: str | None = None
    """Path to torchvision's `vgg16-397923af.pth` (or any VGG16 state dict) for `vgg`."""
    chroma_weight: float = 0.0
    """Extra weight on the colour part of the pixel error (the error minus its mean over RGB), in the
    `rec_loss` norm. From scratch an autoencoder otherwise sits in a colour-blind saddle (sepia outputs)
    for thousands of steps; 0 leaves the loss plain."""
    learn_logvar: bool = False
    """Learned scalar log-variance on the reconstruction term (latent-diffusion's `logvar`)."""
    disc_layers: int = 3
    """PatchGAN depth."""
    disc_channels: int = 64
    """PatchGAN width of the first layer."""
    disc_norm: Literal["batch", "group", "none"] = "batch"
    """Normalisation in the PatchGAN. `batch` (taming's choice) keeps per-process statistics under
    data parallelism; `group` makes multi-process runs match single-process ones exactly."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.perceptual_weight >= 0, "loss.perceptual_weight", ">= 0")
        check(self.chroma_weight >= 0, "loss.chroma_weight", ">= 0")
        check(self.disc_layers >= 1 and self.disc_channels >= 1, "loss.disc_layers", ">= 1 (and disc_channels)")


# --- the loop's section ---------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    batch_size: int = 8
    """Global batch per optimizer step (all processes together, before accumulation)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; each holds batch_size/(processes*grad_accum) items."""
    max_steps: int = 1000
    """Optimizer steps of the run; may change when resuming if the learning rate does not jump there
    (a constant rate; wsd while on its plateau under both lengths): a run extended across sessions."""
    lr: float = 4.5e-6
    """Learning rate (of the first phase; `disc_lr` for a discriminator)."""
    disc_lr: float | None = None
    """Discriminator learning rate (default: `lr`)."""
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    """AdamW's betas."""
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "linear", "cosine", "wsd"] = "constant"
    """`wsd`: warm-up, stable, decay (transformers' `get_wsd_schedule`): constant after the warm-up, then a
    1-sqrt decay to 0 over the last `decay_fraction` of `max_steps`, the cooldown of Hägele et al. 2024."""
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    """`wsd` only: the fraction of `max_steps` the final decay takes."""
    max_grad_norm: float | None = 1.0
    """Clip each phase's gradient norm (null: no clipping)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision; weights and optimizer state stay fp32. `auto`: bf16 where the GPU or CPU computes
    it natively (AMX, AVX512-BF16), fp32 elsewhere (tokenizers_ae.precision.training_precision); an explicit
    `bf16` runs emulated bf16 on other CPUs too, slower than fp32, with a warning."""
    ema_decay: float | None = 0.999
    """EMA of the generator weights, used for eval and export (null: off)."""
    trainable: Literal["all", "decoder", "encoder"] = "all"
    """Which half of an autoencoder trains; the other is frozen (`decoder`: Stable Diffusion's ft-MSE way,
    the latents stay bit-identical). KL-VAE and video VAE families (train/trainable.py)."""
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite: int = 10
    """Stop after this many non-finite steps in a row (each is skipped)."""
    progress: bool = True
    """Show a progress bar."""
    curves: bool = True
    """Redraw `curves.png` (losses and every eval metric against step, eval/curves.py) after each evaluation."""
    latent_stats_images: int = 256
    """KL-VAE: training images encoded at the end to measure the latent scaling factor written to model/."""

    def __post_init__(self) -> None:
        for k in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every",
                  "checkpoint_every", "keep_checkpoints", "max_nonfinite", "latent_stats_images"):
            check(getattr(self, k) >= 1, f"train.{k}", ">= 1")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas", "two numbers in [0, 1)")
        check(math.isfinite(self.lr) and self.lr > 0, "train.lr", "a finite number > 0")
        check(self.disc_lr is None or (math.isfinite(self.disc_lr) and self.disc_lr > 0), "train.disc_lr",
              "a finite number > 0 or null")
        check(self.warmup_steps >= 0, "train.warmup_steps", ">= 0")
        check(0 < self.decay_fraction <= 1, "train.decay_fraction", "in (0, 1]")
        if self.lr_schedule == "wsd":
            check(self.warmup_steps + self.decay_steps <= self.max_steps, "train.warmup_steps",
                  f"at most max_steps minus the wsd decay ({self.max_steps} - {self.decay_steps})")
        check(self.weight_decay >= 0, "train.weight_decay", ">= 0")
        check(self.ema_decay is None or 0 <= self.ema_decay < 1, "train.ema_decay", "in [0, 1) or null")
        check(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm", "> 0 or null")

    @property
    def decay_steps(self) -> int:
        """Steps of the `wsd` schedule's final decay (at least 1)."""
        return max(1, round(self.decay_fraction * self.max_steps))


@dataclass
class Config:
    """A whole recipe. `data`, `model` and `loss` are the sections of the family `model.kind` names
    (`train.families.FAMILIES`); `loss` is None for families without one."""

    output_dir: str = "runs/default"
    """Run directory: config.yaml, checkpoints/, model/, metrics.jsonl, samples/, logs/."""
    seed: int = 0
    """Seeds the initial weights, the data order and every random draw of the run."""
    resume: str = "auto"
    """`auto`: continue from the newest complete checkpoint in output_dir; `never`; or a checkpoint path."""
    data: Any = None
    model: Any = None
    loss: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(self.seed >= 0, "seed", ">= 0")

    def check_sections(self) -> None:
        """Rules between sections (each section checks itself when built)."""
        t = self.train
        gan_on = self.loss is not None and getattr(self.loss, "disc_start", t.max_steps) < t.max_steps
        if t.trainable == "encoder" and gan_on and getattr(self.loss, "adaptive_weight", False):
            raise ConfigError("train.trainable=encoder with a GAN: the adaptive weight reads the gradient at the "
                              "decoder's last layer, which is frozen; set loss.adaptive_weight=false or "
                              "loss.disc_start >= train.max_steps")
        channels = getattr(self.model, "in_channels", 3)
        if getattr(self.loss, "chroma_weight", 0) > 0 and channels != 3:
            raise ConfigError(f"loss.chroma_weight weighs the colour part of an RGB error, but model.in_channels is "
                              f"{channels}; set loss.chroma_weight=0")
        backbone = getattr(self.loss, "perceptual_backbone", None)
        side = getattr(self.data, "resolution", None)
        if backbone in ("haarpsi", "ms_ssim") and getattr(self.loss, "perceptual_weight", 0) > 0 and side:
            # Not at the top: the loss module pulls in lpips and torchmetrics, needed only for these two terms.
            from tokenizers_ae.losses.perceptual import HaarPSIDistance, MSSSIMDistance  # lazy: see above

            need = (HaarPSIDistance if backbone == "haarpsi" else MSSSIMDistance).min_side
            if side < need:
                raise ConfigError(f"loss.perceptual_backbone={backbone} needs images of at least {need} pixels, "
                                  f"but data.resolution is {side}; raise data.resolution or set "
                                  "loss.perceptual_weight=0")

    @property
    def kind(self) -> str:
        return self.model.kind


# --- loading --------------------------------------------------------------------------------------------

def coerce(value: Any, tp: Any, key: str) -> Any:
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
                return coerce(value, a, key)
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
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
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


def build(cls: type, raw: Any, prefix: str) -> Any:
    """`cls` (a section dataclass) from the mapping `raw`; ConfigError naming `prefix.key` for an
    unknown key, a wrong type or a value the section's checks refuse."""
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
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in raw.items()}
    return cls(**kwargs)


def section_keys(cls: type | None) -> set[str]:
    """The keys a section dataclass accepts (none for a family without the section)."""
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


def to_dict(cfg: Config) -> dict:
    """Plain data (what `config.yaml` holds); a family without a loss section has no `loss` key."""
    out = dataclasses.asdict(cfg)
    if cfg.loss is None:
        del out["loss"]
    return out


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs
