"""`model.kind: diffusion_prior` -- a diffusion model over the latents of `aetk encode` (data.path is
the encode directory; the latent shape and classes come from its manifest), or over pixels (data.path
an image source: the pixel-space baseline). diffusers' UNet2DModel or DiT, DDPM training with epsilon
or v-prediction, class conditioning with label dropout for classifier-free guidance. Video latents
(c, t, h, w) from a video VAE take the DiT on spatio-temporal patches (diffusers' Wan transformer).
Exported as a diffusers pipeline directory that samples the same images (video priors: the
transformer and scheduler); `aetk sample` decodes through the first stage.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from train.config import Config, ConfigError, ImageData, check
from train.families.base import EvalContext, Family, SampleRequest


@dataclass
class UNetConfig:
    """`model.denoiser: unet`: diffusers' UNet2DModel."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    """Channels per resolution level."""
    layers_per_block: int = 1
    norm_num_groups: int = 32
    attention: bool = True
    """Self-attention at the lowest resolution."""

    def __post_init__(self) -> None:
        check(len(self.block_out_channels) >= 1 and self.layers_per_block >= 1, "model.unet.block_out_channels",
              "a non-empty list (and layers_per_block >= 1)")
        for c in self.block_out_channels:
            check(c % self.norm_num_groups == 0, "model.unet.block_out_channels",
                  f"multiples of model.unet.norm_num_groups={self.norm_num_groups} (got {self.block_out_channels})")


@dataclass
class DiTConfig:
    """`model.denoiser: dit`: diffusers' DiTTransformer2DModel (adaLN-zero)."""

    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 32
    """Width = num_heads x head_dim."""
    patch_size: int = 2
    """Side of the square patches the latent is cut into (tokens = (h / p) x (w / p))."""
    temporal_patch: int = 1
    """Video latents: latent frames per patch (tokens = (t / temporal_patch) x (h / p) x (w / p))."""
    adaln_class: bool = False
    """Video latents: condition on the class through adaLN-Zero, as DiT does (latent_diffusion/video_dit.py),
    instead of cross-attention to one class token (how runs made before this option were trained)."""

    def __post_init__(self) -> None:
        check(min(self.num_layers, self.num_heads, self.head_dim, self.patch_size, self.temporal_patch) >= 1,
              "model.dit", "positive num_layers, num_heads, head_dim, patch_size and temporal_patch")


@dataclass
class DiffusionPriorModel:
    kind: Literal["diffusion_prior"] = "diffusion_prior"
    denoiser: Literal["unet", "dit"] = "unet"
    """diffusers' UNet2DModel (`model.unet`) or DiT (`model.dit`)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the denoiser predicts."""
    num_train_timesteps: int = 1000
    """DDPM steps."""
    beta_schedule: Literal["auto", "scaled_linear", "linear"] = "auto"
    """Noise schedule; auto = Stable Diffusion's scaled_linear for latents, DDPM's linear for pixels."""
    class_conditional: bool = False
    """Condition on the class label of each item (the encode manifest's `num_classes`: class
    sub-folders, a `label` column, builtin:digits)."""
    cond_dropout: float = 0.1
    """Fraction of labels replaced by the null class in training, so one model also predicts
    unconditionally (classifier-free guidance)."""
    snr_gamma: float | None = None
    """Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' `--snr_gamma`, 5 in their scripts): each
    timestep's loss is weighted min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), so the nearly clean
    timesteps stop dominating the gradient and the noisy ones, where shapes form, learn sooner. null: off."""
    guidance_scale: float = 3.0
    """Classifier-free guidance for eval samples of a class-conditional prior."""
    first_stage: str | None = None
    """The KL-VAE (run dir, diffusers dir or single file) whose decoder turns sampled latents into
    images for eval grids and `aetk sample` (the video VAE, for video latents)."""

    def __post_init__(self) -> None:
        check(0.0 <= self.cond_dropout < 1.0, "model.cond_dropout", "in [0, 1)")
        check(self.num_train_timesteps >= 2, "model.num_train_timesteps", ">= 2")
        check(self.snr_gamma is None or self.snr_gamma > 0, "model.snr_gamma", "> 0, or null (off)")


def build_model(cfg: Config):
    from latent_diffusion.diffusion_prior import DiffusionPrior, build_dit, build_unet
    from train.data.sources import prior_datasets

    m: DiffusionPriorModel = cfg.model
    items, _ = prior_datasets(cfg)
    latent = items.space == "latent"
    if m.class_conditional and not items.num_classes:
        raise ConfigError(f"model.class_conditional: {cfg.data.path} has no class labels (encode a labelled "
                          "source: class sub-folders, a `label` column or builtin:digits)")
    k = items.num_classes if m.class_conditional else 0
    if len(items.latent_shape) == 4:  # video latents (c, t, h, w)
        net = build_video_dit(m, items.latent_shape, k)
    elif m.denoiser == "dit":
        c, h, w = items.latent_shape
        d = m.dit
        if h % d.patch_size or w % d.patch_size:
            raise ConfigError(f"model.dit.patch_size: {d.patch_size} does not divide the {h}x{w} latent")
        net = build_dit(latent_channels=c, sample_size=h, num_layers=d.num_layers, num_heads=d.num_heads,
                        head_dim=d.head_dim, patch_size=d.patch_size, num_classes=k)
    else:
        c, h, w = items.latent_shape
        u = m.unet
        net = build_unet(latent_channels=c, sample_size=h, block_out_channels=u.block_out_channels,
                         layers_per_block=u.layers_per_block, norm_num_groups=u.norm_num_groups,
                         attention=u.attention, num_classes=k)
    schedule = m.beta_schedule if m.beta_schedule != "auto" else ("scaled_linear" if latent else "linear")
    return DiffusionPrior(net, prediction_type=m.prediction_type, num_train_timesteps=m.num_train_timesteps,
                          beta_schedule=schedule, num_classes=k, clip_sample=not latent,
                          latent_shape=items.latent_shape, scaling_factor=items.scaling_factor, space=items.space,
                          first_stage=m.first_stage, class_names=items.class_names if k else [],
                          shift_factor=items.shift_factor)


def build_video_dit(m: DiffusionPriorModel, shape: list[int], num_classes: int):
    """The DiT over (c, t, h, w) video latents, cut into (temporal_patch, patch_size, patch_size) patches."""
    from latent_diffusion.video_dit import ClassVideoDiT

    if m.denoiser != "dit":
        raise ConfigError(f"model.denoiser: {m.denoiser} takes images; video latents {shape} need dit "
                          "(spatio-temporal patches)")
    d = m.dit
    c, t, h, w = shape
    if t % d.temporal_patch or h % d.patch_size or w % d.patch_size:
        raise ConfigError(f"model.dit: patches of {d.temporal_patch}x{d.patch_size}x{d.patch_size} do not tile the "
                          f"{t}x{h}x{w} video latent (temporal_patch, patch_size)")
    return ClassVideoDiT(in_channels=c, patch_size=(d.temporal_patch, d.patch_size, d.patch_size),
                         num_layers=d.num_layers, num_heads=d.num_heads, head_dim=d.head_dim, num_classes=num_classes,
                         adaln_class=d.adaln_class)


def build_task(cfg: Config, model):
    from train.prior_task import DiffusionPriorTask

    t = cfg.train
    return DiffusionPriorTask(prior=model, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay,
                              cond_dropout=cfg.model.cond_dropout, snr_gamma=cfg.model.snr_gamma)


def datasets(cfg: Config):
    from train.data.sources import prior_datasets

    return prior_datasets(cfg)


def load_first_stage(path: str, *, video: bool = False):
    """The KL-VAE (the video VAE for video latents) that decodes a prior's latents; ConfigError naming
    the path when it is not one."""
    from tokenizers_ae.models.kl_vae import KLVAE
    from tokenizers_ae.models.video_vae import VideoVAE
    from tokenizers_ae.pretrained import LoadError

    try:
        return (VideoVAE if video else KLVAE).from_pretrained(path)
    except LoadError as e:
        raise ConfigError(f"first stage: {e}") from None


def _is_video(prior) -> bool:
    return len(prior.latent_shape) == 4


def save_samples(images, path: Path, nrow: int) -> None:
    """Images -> a PNG grid; clips -> a PNG with one clip per row (its frames) and a looping GIF beside it."""
    from latent_diffusion.sampling import save_gif, save_grid, video_frames

    if images.ndim == 5:
        save_grid(video_frames(images), path, nrow=images.shape[2])
        save_gif(images, path.with_suffix(".gif"))
    else:
        save_grid(images, path, nrow=nrow)


class Evaluator:
    """Seeded samples (classes in turn, guided, when conditional) -> images: decoded by the first
    stage, or the samples themselves for the pixel-space baseline -> samples/sample-STEP.png; the
    held-out denoising loss; nearest-neighbour distances of samples and of held-out images to the
    training images (samples far below the held-out distance are copies). The first stage and the
    decoded training images are loaded once."""

    def __init__(self) -> None:
        self.first_stage = None
        self.reference = None

    def __call__(self, ctx: EvalContext) -> dict[str, float]:
        import torch

        from eval.prior import denoising_loss, nn_rms
        from latent_diffusion.diffusion_prior import sample
        from latent_diffusion.sampling import decode_latents, grid_columns

        prior, m, data = ctx.model, ctx.cfg.model, ctx.train_dataset
        n = ctx.cfg.data.val_size
        prior.eval()
        labels = torch.arange(n) % prior.num_classes if prior.num_classes else None
        z = sample(prior, n=n, seed=ctx.cfg.seed, steps=25, labels=labels, guidance=m.guidance_scale)
        val_x, val_y = ctx.val_batch["x"], ctx.val_batch.get("y") if prior.num_classes else None
        out = {"eval/sample_mean": float(z.mean()), "eval/sample_std": float(z.std()),
               "eval/val_denoise_loss": denoising_loss(prior, val_x, val_y, seed=ctx.cfg.seed)}
        prior.train()
        pixel = prior.space == "pixel"
        if not pixel and m.first_stage and self.first_stage is None:
            self.first_stage = load_first_stage(m.first_stage, video=_is_video(prior)).to(ctx.device)
        if not pixel and self.first_stage is None:
            return out

        def to_images(t: torch.Tensor) -> torch.Tensor:
            if pixel:
                return t.float().clamp(-1, 1)
            return decode_latents(self.first_stage, t, prior.scaling_factor, shift_factor=prior.shift_factor)

        if self.reference is None:  # training images for the copy check, decoded once
            k = min(256, len(data))
            self.reference = torch.cat([to_images(torch.stack([data[i]["x"] for i in range(s, min(s + 32, k))]))
                                        for s in range(0, k, 32)])
        images = to_images(z)
        out["eval/nn_rms_sample_to_train"] = float(nn_rms(images, self.reference).median())
        out["eval/nn_rms_val_to_train"] = float(nn_rms(to_images(val_x), self.reference).median())
        save_samples(images, ctx.samples / f"sample-{ctx.step:07d}.png", grid_columns(n, prior.num_classes, None))
        return out


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    """A diffusers pipeline directory when one fits (see `DiffusionPrior.save_pretrained`)."""
    first_stage = load_first_stage(cfg.model.first_stage, video=_is_video(model)) \
        if cfg.model.first_stage and model.space == "latent" else None
    model.save_pretrained(out, first_stage=first_stage)


def sample(prior, req: SampleRequest) -> str:
    """Latents (seeded; DDIM, DDPM or DPM-Solver++; guided when class-conditional) decoded by the
    first stage (pixel priors need none) -> a PNG grid, one class per column when classes cycle."""
    from latent_diffusion.diffusion_prior import sample as sample_latents
    from latent_diffusion.sampling import decode_latents, grid_columns, sample_labels

    try:
        labels = sample_labels(req.n, prior.num_classes, req.label, prior.class_names)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    vae = None
    if prior.space == "latent":  # load the decoder before sampling: a wrong path fails fast
        path = req.first_stage or prior.first_stage
        if not path:
            raise ConfigError("no first stage to decode with: pass --vae PATH (the KL-VAE of the latents)")
        vae = load_first_stage(path, video=_is_video(prior))
    z = sample_latents(prior, n=req.n, seed=req.seed, steps=req.steps, sampler=req.sampler, labels=labels,
                       guidance=req.guidance, progress=True)
    images = (z.float().clamp(-1, 1) if vae is None
              else decode_latents(vae, z, prior.scaling_factor, req.tile, prior.shift_factor))
    save_samples(images, Path(req.out), grid_columns(req.n, prior.num_classes, req.label))
    gif = f" and {Path(req.out).with_suffix('.gif')}" if images.ndim == 5 else ""
    return f"wrote {req.n} samples to {req.out}{gif}"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "sample": frozenset({"out", "n", "seed", "steps", "sampler", "guidance", "label", "first_stage", "tile"}),
}

FAMILY = Family(
    kind="diffusion_prior", summary="diffusion prior (UNet or DiT) over encoded latents, or the pixel baseline",
    model=DiffusionPriorModel, data=ImageData, loss=None, saved_names=("DiffusionPrior",),
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=Evaluator, export=export,
    sample=sample,
    reads=READS)
