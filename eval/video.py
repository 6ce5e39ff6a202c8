"""Video reconstruction metrics, a space-time PCA baseline and reconstruction strips for the video
tokenizers (`video_vae`).

Videos are (B, C, T, H, W) in [-1, 1]. Frame metrics (PSNR, SSIM, MS-SSIM, HaarPSI) are the image
metrics of `eval.image` on every frame (time folded into the batch), averaged over frames; the
temporal metrics score the frame differences, where flicker shows and per-frame metrics are blind.
The PCA baseline codes the first frame alone and then groups of f_t frames, like a causal video VAE,
with the same number of latent values.
"""

from __future__ import annotations

import math
from pathlib import Path

import piq
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from eval.baselines import PatchPCA
from eval.image import reconstruction_metrics, to_unit

HAARPSI_SCALES = 3
"""piq.haarpsi's default number of Haar wavelet scales."""
HAARPSI_MIN_SIDE = 2 ** (HAARPSI_SCALES + 1)
"""piq.haarpsi refuses frames with a side below its largest kernel, 2 ** (scales + 1) = 16 pixels."""
ERROR_GAIN = 4.0
"""The strip's error maps show |recon - x| (in [0, 1] units) times this, clamped to 1 (white)."""
STRIP_MIN_SIDE = 128
"""The strip upscales frames (nearest neighbour) by a whole factor until their short side is at least this."""


def frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * T, C, H, W), frames of a video consecutive."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _psnr_db(err: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) with a peak of 1 of each leading-index slice of an error tensor (B, T, ...) -> (B, T);
    inf where the error is exactly zero."""
    mse = err.double().pow(2).flatten(2).mean(-1)
    return -10 * torch.log10(mse)


def _haarpsi(ux: torch.Tensor, ur: torch.Tensor) -> dict:
    """{"haarpsi": mean over frames} for (N, C, H, W) frames in [0, 1]; None with "haarpsi_reason"
    for frames below piq's minimum size (upsampling them would score an image nobody looks at)."""
    if min(ux.shape[-2:]) < HAARPSI_MIN_SIDE:
        return {"haarpsi": None, "haarpsi_reason": f"frames {list(ux.shape[-2:])} are below piq.haarpsi's minimum "
                                                   f"of {HAARPSI_MIN_SIDE} px per side"}
    return {"haarpsi": float(piq.haarpsi(ur, ux, data_range=1.0, scales=HAARPSI_SCALES, reduction="mean"))}


def _temporal(ux: torch.Tensor, ur: torch.Tensor) -> dict:
    """Error of the frame differences of (B, C, T, H, W) videos in [0, 1]: what flicker and jitter
    cost, and what a static error (the same on every frame) does not.

    `temporal_l1`: mean |(r[t+1] - r[t]) - (x[t+1] - x[t])|, in [0, 1] units.
    `temporal_psnr` (dB): PSNR of that difference error with the frames' peak of 1 (not the
    differences' range of 2), per frame pair then averaged like `psnr`, so that the two compare:
    errors independent from frame to frame score about 3 dB below `psnr`, an error alternating in
    sign (flicker) 6 dB below, a static error infinity.
    """
    if ux.shape[2] < 2:
        reason = "a single frame has no frame differences"
        return {"temporal_l1": None, "temporal_psnr": None, "temporal_reason": reason}
    err = (ur.diff(dim=2) - ux.diff(dim=2)).transpose(1, 2)  # (B, T-1, C, H, W)
    return {"temporal_l1": float(err.abs().mean()), "temporal_psnr": float(_psnr_db(err).mean())}


@torch.no_grad()
def video_metrics(x: torch.Tensor, recon: torch.Tensor) -> dict:
    """Reconstruction quality of videos x, recon (B, C, T, H, W) in [-1, 1].

    Per frame, averaged over all B * T frames (`eval.image.reconstruction_metrics`): `psnr` (dB,
    inf for an exact reconstruction), `ssim`, `ms_ssim` (+ `ms_ssim_scales`) for frames of 20 px
    or more; `haarpsi` (piq, weight-free perceptual similarity in [0, 1], higher is better; None
    with `haarpsi_reason` below 16 px); `psnr_per_frame`: T floats, the mean PSNR of each frame
    index over the batch (a dip at every f_t-th frame is flicker at the codec's chunk boundaries);
    `temporal_l1`, `temporal_psnr`: see `_temporal` (None with `temporal_reason` for T = 1).
    """
    if x.dim() != 5 or x.shape != recon.shape:
        raise ValueError(f"videos must be (B, C, T, H, W) of one shape, got {tuple(x.shape)} and {tuple(recon.shape)}")
    ux, ur = to_unit(x.cpu()), to_unit(recon.cpu())
    out = reconstruction_metrics(frames(x.cpu()), frames(recon.cpu()))
    out.update(_haarpsi(frames(ux), frames(ur)))
    out["psnr_per_frame"] = _psnr_db((ur - ux).transpose(1, 2)).mean(0).tolist()
    out.update(_temporal(ux, ur))
    return out


class _PatchPCA64(PatchPCA):
    """`PatchPCA` fitted and applied in float64 (patch covariances of near-constant video patches are
    ill-conditioned in float32); components beyond the data's rank are zero, so a PCA asked for more
    components than its patches have dimensions or rows still gives `channels` latent channels."""

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        return super()._patches(x).double()  # exact: super() gives float32, what videos are stored in

    def fit(self, x: torch.Tensor) -> _PatchPCA64:
        super().fit(x)
        missing = self.channels - self.components.shape[0]
        if missing > 0:
            self.components = F.pad(self.components, (0, 0, 0, missing))
        return self


class SpaceTimePCA:
    """A linear causal video autoencoder with a video VAE's latent layout: the first frame is coded
    alone by a PCA on its `factor_s` x `factor_s` patches (C * f * f values), every following group
    of `factor_t` frames by a PCA on its `factor_t` x `factor_s` x `factor_s` space-time patches
    (C * f_t * f * f values), each keeping `channels` components, with mean removal, in float64.
    (B, C, 1 + k * f_t, H, W) videos -> latents (B, channels, 1 + k, H / f, W / f): exactly as many
    values as the VAE's. Groups of frames are coded as `PatchPCA` images with C * f_t channels."""

    def __init__(self, factor_t: int, factor_s: int, channels: int) -> None:
        if min(factor_t, factor_s, channels) < 1:
            raise ValueError(f"factor_t, factor_s and channels must be >= 1, got {factor_t}, {factor_s}, {channels}")
        self.factor_t, self.factor_s, self.channels = factor_t, factor_s, channels
        self.first = _PatchPCA64(factor=factor_s, channels=channels)
        self.rest = _PatchPCA64(factor=factor_s, channels=channels)
        self.video_channels: int | None = None

    def latent_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int, int]:
        """(channels, 1 + k, H / f, W / f) of one video of shape (..., T, H, W); ValueError when T - 1
        is not a multiple of f_t or H, W are not multiples of f."""
        t, h, w = shape[-3:]
        if t < 1 or (t - 1) % self.factor_t:
            raise ValueError(f"{t} frames: a causal video codec with temporal factor {self.factor_t} needs "
                             f"1 + k * {self.factor_t} frames (the first frame is coded alone)")
        if h % self.factor_s or w % self.factor_s:
            raise ValueError(f"frames {h}x{w} are not multiples of the spatial factor {self.factor_s}")
        return self.channels, 1 + (t - 1) // self.factor_t, h // self.factor_s, w // self.factor_s

    def latent_values(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Latent values per video of shape (..., T, H, W): channels * (1 + (T-1)/f_t) * (H/f) * (W/f)."""
        return math.prod(self.latent_shape(shape))

    def _groups(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, C, 1 + k * f_t, H, W) -> frames 1.. as (B * k, C * f_t, H, W) images: a space-time patch
        of one of them is a C * f_t * f * f vector."""
        b, c, t, h, w = videos.shape
        k = (t - 1) // self.factor_t
        g = videos[:, :, 1:].reshape(b, c, k, self.factor_t, h, w).transpose(1, 2)  # (B, k, C, f_t, H, W)
        return g.reshape(b * k, c * self.factor_t, h, w)

    def fit(self, videos: torch.Tensor) -> SpaceTimePCA:
        """Fit both PCAs on videos (N, C, T, H, W) in [-1, 1] (the same T, H, W constraints as coding)."""
        self.latent_shape(videos.shape)
        self.video_channels = videos.shape[1]
        self.first.fit(videos[:, :, 0])
        if videos.shape[2] > 1:
            self.rest.fit(self._groups(videos))
        return self

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> float64 latents (B, channels, 1 + k, H / f, W / f)."""
        _, k1, _, _ = self.latent_shape(videos.shape)
        if self.first.components is None or (k1 > 1 and self.rest.components is None):
            raise ValueError("SpaceTimePCA is not fitted (frames after the first need a fit on videos of several)")
        b = videos.shape[0]
        z0 = self.first.encode(videos[:, :, 0])[:, :, None]  # (B, channels, 1, h, w)
        if k1 == 1:
            return z0
        zr = self.rest.encode(self._groups(videos))  # (B * k, channels, h, w)
        zr = zr.reshape(b, k1 - 1, *zr.shape[1:]).transpose(1, 2)  # (B, channels, k, h, w)
        return torch.cat([z0, zr], dim=2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, channels, 1 + k, h, w) -> float64 videos (B, C, 1 + k * f_t, h * f, w * f), unclamped."""
        b, _, k1, _, _ = z.shape
        c, ft = self.video_channels, self.factor_t
        first = self.first.decode(z[:, :, 0], channels=c)[:, :, None]  # (B, C, 1, H, W)
        if k1 == 1:
            return first
        zr = z[:, :, 1:].transpose(1, 2).reshape(b * (k1 - 1), z.shape[1], *z.shape[3:])
        g = self.rest.decode(zr, channels=c * ft)  # (B * k, C * f_t, H, W)
        h, w = g.shape[-2:]
        rest = g.reshape(b, k1 - 1, c, ft, h, w).transpose(1, 2).reshape(b, c, (k1 - 1) * ft, h, w)
        return torch.cat([first, rest], dim=2)

    def reconstruct(self, videos: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> the PCA reconstruction, same shape and dtype, clamped to [-1, 1]."""
        return self.decode(self.encode(videos)).clamp(-1, 1).to(videos.dtype)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 3, H, W): RGB as is, any other channel count as its grey mean."""
    return x if x.shape[1] == 3 else x.mean(1, keepdim=True).expand(-1, 3, -1, -1)


def save_video_strip(x: torch.Tensor, *recons: torch.Tensor, path: str | Path, max_videos: int = 4,
                     max_frames: int | None = None, scale: int | None = None) -> Path:
    """One PNG of videos x and their reconstructions (B, C, T, H, W) in [-1, 1]: for each of the
    first `max_videos` videos, a row of its first `max_frames` frames (all when None), a row per
    reconstruction (in the order given), and, when there is one, a grey row of the first's error
    |recon - x| x `ERROR_GAIN` (white: 1/4 of the range or more off). Frames are upscaled `scale`
    times with nearest neighbour (default: until the short side reaches `STRIP_MIN_SIDE` px), with
    2 px of white between them. Returns the path."""
    n, t = min(max_videos, x.shape[0]), x.shape[2] if max_frames is None else min(max_frames, x.shape[2])
    if scale is None:
        scale = max(1, math.ceil(STRIP_MIN_SIDE / min(x.shape[-2:])))
    videos = [to_unit(v[:n, :, :t].cpu()) for v in (x, *recons)]  # (n, C, t, H, W) each
    if recons:
        err = (videos[1] - videos[0]).abs().mean(1, keepdim=True) * ERROR_GAIN
        videos.append(err.clamp(0, 1))
    rows = [_rgb(v[i].transpose(0, 1)) for i in range(n) for v in videos]  # (t, 3, H, W) per row
    tiles = F.interpolate(torch.cat(rows), scale_factor=scale, mode="nearest")
    grid = make_grid(tiles, nrow=t, padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


def _device(model) -> torch.device | None:
    """The device of a torch module's parameters; None for other objects (their inputs stay put)."""
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p.device if p is not None else None


@torch.no_grad()
def reconstruct_videos(model, x: torch.Tensor, batch: int = 2) -> torch.Tensor:
    """`model.reconstruct` of videos x (N, C, T, H, W) `batch` at a time (on the model's device for a
    torch module), as float32 on the CPU, clamped to [-1, 1]."""
    if callable(getattr(model, "eval", None)):
        model.eval()
    device = _device(model)
    outs = []
    for s in range(0, x.shape[0], batch):
        v = x[s:s + batch]
        outs.append(model.reconstruct(v if device is None else v.to(device)).float().cpu().clamp(-1, 1))
    return torch.cat(outs)


def evaluate_videos(model, x: torch.Tensor, *, fit_x: torch.Tensor | None = None, factor_t: int, factor_s: int,
                    channels: int, out_dir: str | Path | None = None, batch: int = 2) -> dict:
    """A video tokenizer on videos x (N, C, T, H, W) in [-1, 1] beside `SpaceTimePCA` with its
    factors and latent channels (the same number of latent values). `model`: anything with
    `reconstruct((B, C, T, H, W)) -> same shape`; the PCA is fitted on `fit_x` when given, else on
    x itself (optimistic for the PCA; `pca.fitted_on` says which).

    Returns {"model": video_metrics, "pca": video_metrics + "fitted_on", "n", "frames",
    "resolution": [H, W], "latent_values_per_video"} and, with `out_dir`, "strip": the path of
    out_dir/video-strip.png (rows: original, model, PCA, model error). ValueError for a T, H, W
    the factors do not divide (before the model runs).
    """
    pca = SpaceTimePCA(factor_t, factor_s, channels)
    values = pca.latent_values(x.shape)
    recon = reconstruct_videos(model, x, batch=batch)
    pca.fit(fit_x if fit_x is not None else x)
    prec = pca.reconstruct(x.float())
    result = {
        "model": video_metrics(x, recon),
        "pca": {**video_metrics(x, prec), "fitted_on": "fit videos" if fit_x is not None else "the evaluation videos",
                "fit_items": int((fit_x if fit_x is not None else x).shape[0])},
        "n": x.shape[0], "frames": x.shape[2], "resolution": list(x.shape[-2:]), "latent_values_per_video": values,
    }
    if out_dir is not None:
        result["strip"] = str(save_video_strip(x, recon, prec, path=Path(out_dir) / "video-strip.png"))
    return result
