"""Build a small offline video set for video_vae smoke runs: camera moves over real photos, plus moving digits.

    .venv/bin/python scripts/make_videos.py [--out data/videos] [--resolution 64] [--frames 17] [--lossless]

Writes clips of --frames frames, --resolution pixels square, into OUT/train and OUT/val (H.264 .mp4, or
FFV1 .mkv with --lossless), read back by `tokenizers_ae.data.video.VideoFolder`:
  * photo-<source>-<k>.mp4: a smooth camera path (a pan, a zoom or both between two random crop windows,
    eased in and out) over one real photograph: scikit-image's photos, and the photographs of the Debian packages
    plasma-workspace-wallpapers, lomiri-wallpapers and opencv-doc when installed (as root
    the script installs them with apt-get unless --no-install). The split is by source photo: about 10%
    of the photos (at least one) give only val clips, so no photo is seen in both splits.
    mate-backgrounds and gnome-backgrounds are never used: they are kept for independent evaluation.
  * digits-<k>.mp4: Moving-MNIST-style clips (`builtin:moving-digits`), train digits to train/, val to val/.
  * synthetic-<source>-<k>.mp4 with --synthetic: FFmpeg's lavfi test sources (testsrc2, mandelbrot, ...).
Everything is deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is not on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # nor this folder, which holds photo_sources

from photo_sources import (  # noqa: E402
    MIN_WINDOW,
    VAL_PERCENT,
    Photo,
    ensure_packages,
    find_photos,
    load_photo,
    split_photos,
)

from tokenizers_ae.data.video import VIDEO_EXTENSIONS, MovingDigits, write_video  # noqa: E402

# name -> filter options after size and rate; the last one that opens is val's. Only sources that give the same
# frames on every run (`gradients` does not).
LAVFI_SOURCES = {
    "testsrc2": "", "mandelbrot": "", "life": ":seed={seed}:mold=10:ratio=0.2", "cellauto": ":seed={seed}:rule=110",
    "sierpinski": ":seed={seed}:jump=1", "zoneplate": ":kt2=4:kx2=80:ky2=80",
}


@dataclass(frozen=True)
class Clip:
    split: str
    name: str  # file name without suffix
    kind: str  # photo, digits, synthetic
    photo: Photo | None = None
    index: int = 0  # k-th clip of its photo, or the item index of MovingDigits / lavfi seed


# ---------------------------------------------------------------- camera moves


def camera_path(rng: np.random.Generator, h: int, w: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop windows along a smooth camera move over an h x w photo: centres (T, 2) as (x, y), sides (T,).

    A pan, a zoom (in or out, 1.25x to 2x) or both, between two windows whose side is at least MIN_WINDOW
    of the shorter side; smoothstep easing starts and ends the move gently, zoom is geometric.
    """
    short = min(h, w)
    move = rng.choice(["pan", "zoom", "pan+zoom"])
    s0 = rng.uniform(MIN_WINDOW, 0.8 if move == "pan" else 1.0) * short
    s1 = s0
    if move != "pan":
        factor = math.exp(rng.uniform(math.log(1.25), math.log(2.0)))
        s1 = float(np.clip(s0 * factor if rng.random() < 0.5 else s0 / factor, MIN_WINDOW * short, short))

    def inside(c: np.ndarray, s: float) -> np.ndarray:
        return np.clip(c, [s / 2, s / 2], [w - s / 2, h - s / 2])

    c0 = inside(np.array([rng.uniform(0, w), rng.uniform(0, h)]), s0)
    c1 = c0 + (rng.uniform(-0.6, 0.6, size=2) * s0 if move != "zoom" else 0.0)
    c1 = inside(c1, s1)
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    e = t * t * (3 - 2 * t)  # smoothstep: eased in and out
    sides = s0 * (s1 / s0) ** e  # (T,)
    centres = c0 + (c1 - c0) * e[:, None]  # (T, 2): windows between two valid ones stay inside the photo
    return np.stack([inside(c, s) for c, s in zip(centres, sides)]), sides


def render_photo_clip(photo: torch.Tensor, rng: np.random.Generator, frames: int, resolution: int) -> np.ndarray:
    """(T, R, R, 3) uint8: the photo seen through a moving camera, anti-aliased.

    The photo is first resized so the clip's largest window spans 2R pixels, then every frame is sampled
    at 2R x 2R with bilinear grid_sample (sub-pixel motion, no jitter) and box-filtered to R x R: at most
    1 source pixel per sample, so fine texture does not alias into flicker.
    """
    r2 = 2 * resolution
    _, h, w = photo.shape
    centres, sides = camera_path(rng, h, w, frames)
    f = r2 / float(sides.max())
    hs, ws = max(1, round(h * f)), max(1, round(w * f))
    small = F.interpolate(photo[None], size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)
    # Output [-1, 1] -> input [-1, 1], both spanning pixel edges (align_corners=False): normalised
    # coordinates do not change with the resize, so the windows stay in the original photo's pixels.
    theta = torch.zeros(frames, 2, 3)
    theta[:, 0, 0] = torch.from_numpy(sides / w)
    theta[:, 1, 1] = torch.from_numpy(sides / h)
    theta[:, 0, 2] = torch.from_numpy(2 * centres[:, 0] / w - 1)
    theta[:, 1, 2] = torch.from_numpy(2 * centres[:, 1] / h - 1)
    grid = F.affine_grid(theta, [frames, 3, r2, r2], align_corners=False)  # (T, 2R, 2R, 2)
    x = F.grid_sample(small.expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="border",
                      align_corners=False)  # (T, 3, 2R, 2R)
    x = F.avg_pool2d(x, 2)  # (T, 3, R, R)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------- planning


def plan_photo_clips(train: list[Photo], val: list[Photo], total: int, cap: int | None) -> list[Clip]:
    """`total` clips (fewer if `cap` per photo binds) shared between the splits in proportion to their photos
    (val at least one when it has photos), then round-robin over each split's photos."""
    n = len(train) + len(val)
    if n == 0 or total <= 0:
        return []
    n_val = min(total, max(1, round(total * len(val) / n))) if val else 0
    if not train:
        n_val = total
    clips = []
    for split, photos, count in (("train", train, total - n_val), ("val", val, n_val)):
        if cap is not None:
            count = min(count, cap * len(photos))
        for j in range(count):
            photo, k = photos[j % len(photos)], j // len(photos)
            clips.append(Clip(split, f"photo-{photo.id}-{k}", "photo", photo, k))
    return clips


def plan_digit_clips(total: int) -> list[Clip]:
    n_val = 0 if total < 2 else max(1, round(total * VAL_PERCENT / 100))
    return ([Clip("train", f"digits-{k}", "digits", index=k) for k in range(total - n_val)]
            + [Clip("val", f"digits-{k}", "digits", index=k) for k in range(n_val)])


def lavfi_clip(source: str, options: str, seed: int, frames: int, resolution: int, skip: int) -> np.ndarray:
    """(T, R, R, 3) uint8 from an FFmpeg lavfi source, after `skip` frames (mandelbrot zooms in over time)."""
    import av

    spec = f"{source}=size={resolution}x{resolution}:rate=8" + options.format(seed=seed)
    out = []
    with av.open(spec, format="lavfi") as container:
        for frame in container.decode(video=0):
            if skip > 0:
                skip -= 1
                continue
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == frames:
                break
    return np.stack(out)


def lavfi_sources() -> list[str]:
    """The LAVFI_SOURCES this PyAV build can open ([] when it has no lavfi device at all)."""
    import av

    ok = []
    for source, options in LAVFI_SOURCES.items():
        try:
            with av.open(f"{source}=size=16x16:rate=8" + options.format(seed=1), format="lavfi") as container:
                next(container.decode(video=0))
            ok.append(source)
        except Exception:  # noqa: BLE001 - any failure means: not in this build
            pass
    return ok


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/videos", help="output folder (gets train/ and val/)")
    ap.add_argument("--resolution", type=int, default=64, help="clip width and height in pixels")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip (a causal video VAE wants 4k+1)")
    ap.add_argument("--photo-clips", type=int, default=400, help="camera-move clips over photos (0: none)")
    ap.add_argument("--digit-clips", type=int, default=400, help="moving-digits clips (0: none)")
    ap.add_argument("--clips-per-photo", type=int, default=None, help="at most this many clips per source photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-install", action="store_true", help="never apt-get install the photo packages")
    ap.add_argument("--synthetic", action="store_true", help="also clips from FFmpeg's lavfi test sources")
    ap.add_argument("--lossless", action="store_true", help="FFV1 .mkv (exact RGB) instead of H.264 .mp4")
    ap.add_argument("--overwrite", action="store_true", help="replace the video files already in OUT/train, OUT/val")
    a = ap.parse_args(argv)
    if a.resolution < 8 or a.frames < 1 or (not a.lossless and a.resolution % 2):
        print(f"--resolution must be >= 8 (and even for .mp4), --frames >= 1; got {a.resolution}, {a.frames}",
              file=sys.stderr)
        return 2
    t_start = time.time()
    out = Path(a.out)
    for split in ("train", "val"):
        d = out / split
        old = sorted(f for f in d.iterdir() if f.suffix.lower() in VIDEO_EXTENSIONS) if d.is_dir() else []
        if old and not a.overwrite:
            print(f"{d} already holds {len(old)} video files; pass --overwrite to replace them", file=sys.stderr)
            return 1
        for f in old:
            f.unlink()
        d.mkdir(parents=True, exist_ok=True)

    min_side = math.ceil(2 * a.resolution / MIN_WINDOW)  # the smallest window still spans 2R pixels
    photos: list[Photo] = []
    if a.photo_clips > 0:
        ensure_packages(a.no_install)
        photos = find_photos(min_side)
    if not photos and a.digit_clips <= 0:
        print("nothing to build: no photo source found (or --photo-clips 0) and --digit-clips 0", file=sys.stderr)
        return 2
    train_photos, val_photos = split_photos(photos, a.seed)
    clips = plan_photo_clips(train_photos, val_photos, a.photo_clips, a.clips_per_photo)
    clips += plan_digit_clips(max(0, a.digit_clips))
    if a.synthetic:
        names = lavfi_sources()
        if names:  # the last source is val's: the split is by source here too
            clips += [Clip("val" if s == names[-1] and len(names) > 1 else "train", f"synthetic-{s}-{k}",
                           "synthetic", index=k) for s in names for k in range(2)]
        else:
            print("note: this PyAV build cannot open FFmpeg's lavfi sources; --synthetic clips skipped")

    # Load only the photos that get clips; PIL decodes and resizes without the GIL, so threads overlap.
    used = sorted({c.photo for c in clips if c.photo is not None}, key=lambda p: p.id)
    torch.set_num_threads(1)  # two workers on small tensors: intra-op threads would only contend
    workers = min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        loaded = dict(zip(used, pool.map(lambda p: load_photo(p, min_side), used)))
    digits = {split: MovingDigits(split=split, frames=a.frames, resolution=a.resolution, size=max(1, a.digit_clips),
                                  seed=a.seed) for split in ("train", "val")}
    suffix = ".mkv" if a.lossless else ".mp4"

    def build(clip: Clip) -> int:
        if clip.kind == "photo":
            rng = np.random.default_rng([a.seed, zlib.crc32(clip.photo.id.encode()), clip.index])
            frames = render_photo_clip(loaded[clip.photo][0], rng, a.frames, a.resolution)
        elif clip.kind == "digits":
            x = digits[clip.split][clip.index]["x"]  # (3, T, R, R) in [-1, 1]
            frames = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
        else:
            source = clip.name.split("-")[1]
            frames = lavfi_clip(source, LAVFI_SOURCES[source], a.seed * 100 + clip.index + 1, a.frames,
                                a.resolution, skip=clip.index * a.frames)
        write_video(out / clip.split / f"{clip.name}{suffix}", frames, fps=8, lossless=a.lossless)
        return len(frames)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # torch and the encoders release the GIL
        n_frames = list(pool.map(build, clips))

    print(f"wrote {len(clips)} clips of {a.frames} frames at {a.resolution}x{a.resolution} to {out} "
          f"({'FFV1 .mkv' if a.lossless else 'H.264 .mp4'}) in {time.time() - t_start:.1f} s:")
    for split in ("train", "val"):
        for kind in ("photo", "digits", "synthetic"):
            sel = [c for c in clips if c.split == split and c.kind == kind]
            if sel:
                extra = ""
                if kind == "photo":
                    srcs = {c.photo for c in sel}
                    extra = f" from {len(srcs)} photos, {sum(loaded[p][1] for p in srcs):.1f} MP"
                print(f"  {split:5s} {kind:9s} {len(sel):5d} clips{extra}")
    if photos:
        kinds = {}
        for p in photos:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        print(f"  source photos: {len(photos)} found ({', '.join(f'{k} {n}' for k, n in kinds.items())}), "
              f"{len(used)} used ({sum(loaded[p][1] for p in used):.1f} MP), {len(train_photos)} train / "
              f"{len(val_photos)} val by photo")
    size = sum(f.stat().st_size for f in out.glob("*/*") if f.suffix == suffix)
    print(f"  total {sum(n_frames)} frames, {size / 1e6:.2f} MB")
    print(f"train on it: data.path={out}/train data.val_path={out}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
