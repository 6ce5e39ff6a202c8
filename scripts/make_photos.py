"""Build an offline corpus of real-photo crops for image autoencoders: train and val folders at several sizes.

    .venv/bin/python scripts/make_photos.py [--out data/photos] [--sizes 64 128 256] [--crops-per-photo 24]
                                            [--seed 0] [--tar] [--no-install] [--limit-photos N] [--overwrite]

Sources (scripts/photo_sources.py, shared with scripts/make_videos.py): scikit-image's photos, and the
photographs (an allowlist: no drawn or rendered wallpapers) of the Debian packages plasma-workspace-wallpapers,
lomiri-wallpapers and opencv-doc when installed; as root the script installs them with apt-get unless --no-install.
mate-backgrounds, gnome-backgrounds, oxygen-sounds and ocean-sound-theme are never used: they are kept for
independent evaluation.

Writes, for every --sizes S:
  * OUT/S/train/<photo>-<k>.png and OUT/S/val/<photo>-<k>.png: --crops-per-photo random square crops of each
    photo, S x S RGB, lossless PNG. A crop is a window of 40% to 100% of the photo's shorter side (and at least
    S native pixels when the photo allows, so crops are not upsampled) at a random position, resized with
    antialiasing (box reduction then Lanczos).
  * with --tar, OUT/{train,val}-S-NNNNN.tar: the same PNGs as WebDataset-style shards (members <key>.png).
The split is by source photo (the rule of make_videos.py, so the two sets hold out the same photos): about 10%
of the photos (at least one) give only val crops. OUT/manifest.json records the counts, every source photo with
its split, native size and sha256 (of the file; of the decoded pixel array for scikit-image's photos), the
photos skipped as unreadable, and the installed wallpapers left out because nobody has checked them yet.
Every byte is deterministic for a given --seed, and a size's crops do not depend on which other sizes are built
(while none is above 256: a bigger one reads bigger Plasma wallpaper files).
Read back with `tokenizers_ae.data.sources.build_image_dataset(OUT/S/train)`:
    aetk train ... data.path=OUT/64/train data.val_path=OUT/64/val
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: photo_sources sits next to it

from photo_sources import (  # noqa: E402 - photo_sources puts the repository on sys.path too
    MIN_WINDOW,
    Photo,
    ensure_packages,
    find_photos,
    open_photo,
    skimage_array,
    split_photos,
    unchecked_wallpapers,
)

DEFAULT_SIZES = (64, 128, 256)
# ~100 photos x 24 gives a few thousand crops per size; more crops of the same photos add little variety.
DEFAULT_CROPS_PER_PHOTO = 24
SHARD_SIZE = 1000  # PNGs per tar shard
PNG_OPTIONS = {"format": "PNG", "compress_level": 6, "optimize": False}  # fixed: same bytes on every run
SPLITS = ("train", "val")


@dataclass
class Built:
    """One source photo's result: its native size and digest, and how many crops each size got."""

    photo: Photo
    split: str
    width: int = 0  # native pixels, as stored (before any EXIF rotation)
    height: int = 0
    sha256: str = ""
    crops: dict[int, int] = field(default_factory=dict)  # size -> crops written
    upsampled: dict[int, int] = field(default_factory=dict)  # size -> crops whose window had < size native px
    error: str = ""  # why the photo was skipped ("" when it was not)


def work_side(size: int) -> int:
    """Shorter side (pixels) a photo is decoded at, at least, for crops of `size`: the smallest window then
    still spans 2 x size decoded pixels, so every crop is an antialiased reduction of at least 2x."""
    return math.ceil(2 * size / MIN_WINDOW)


def source_digest(photo: Photo) -> str:
    """sha256 hex of the photo's file, or of scikit-image's array (shape, dtype and bytes) for its photos."""
    if photo.kind == "skimage":
        arr = np.ascontiguousarray(skimage_array(photo.source))
        return hashlib.sha256(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).hexdigest()
    return hashlib.sha256(Path(photo.source).read_bytes()).hexdigest()


def crop_boxes(rng: np.random.Generator, w: int, h: int, native_short: int, size: int,
               n: int) -> list[tuple[float, float, float, float]]:
    """`n` square windows (x0, y0, x1, y1) in the pixels of a decoded w x h photo, fractional.

    The side is uniform in [lo, 1] x the shorter side, lo = MIN_WINDOW, raised so the window spans at least
    `size` native pixels when the photo's native shorter side `native_short` allows; the position is uniform.
    Drawn as fractions of the photo, so the windows do not depend on the resolution it was decoded at."""
    short = min(w, h)
    lo = max(MIN_WINDOW, min(1.0, size / native_short))
    boxes = []
    for _ in range(n):
        side = rng.uniform(lo, 1.0) * short
        x0, y0 = rng.uniform(0.0, 1.0) * (w - side), rng.uniform(0.0, 1.0) * (h - side)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def photo_crops(photo: Photo, sizes: list[int], n: int,
                seed: int) -> tuple[dict[int, list[bytes]], tuple[int, int], dict[int, int]]:
    """PNG bytes of `n` crops per size ({size: [png, ...]}, each size x size RGB), the native (width, height)
    and {size: crops upsampled}. The crops of a size depend only on (seed, photo id, size): each size decodes the
    photo afresh at its own scale. Raises what PIL raises for an unreadable file."""
    out: dict[int, list[bytes]] = {}
    upsampled: dict[int, int] = {}
    native = (0, 0)
    for size in sizes:
        img, native = open_photo(photo, work_side(size))
        rng = np.random.default_rng([seed, zlib.crc32(photo.id.encode()), size])
        boxes = crop_boxes(rng, img.width, img.height, min(native), size, n)
        scale = min(native) / min(img.size)  # native pixels per decoded pixel
        upsampled[size] = sum((x1 - x0) * scale < size for x0, _, x1, _ in boxes)
        pngs = []
        for box in boxes:
            crop = img.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
            buf = io.BytesIO()
            crop.save(buf, **PNG_OPTIONS)
            pngs.append(buf.getvalue())
        out[size] = pngs
    return out, native, upsampled


def crop_name(photo: Photo, k: int) -> str:
    return f"{photo.id}-{k:03d}"  # ids are [A-Za-z0-9_]: also a valid WebDataset key (no dots)


def write_tar(path: Path, files: list[Path]) -> None:
    """A tar of `files` as members <stem>.png with fixed metadata (mtime 0, root, 0644): same bytes every run."""
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for f in files:
            data = f.read_bytes()
            info = tarfile.TarInfo(f.name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def old_outputs(out: Path, sizes: list[int]) -> list[Path]:
    """What an earlier build left for these sizes: PNGs in OUT/S/{train,val} and OUT/{train,val}-S-*.tar."""
    found: list[Path] = []
    for size in sizes:
        for split in SPLITS:
            d = out / str(size) / split
            found += sorted(d.glob("*.png")) if d.is_dir() else []
            found += sorted(out.glob(f"{split}-{size}-*.tar"))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/photos", help="output folder (gets <size>/train and <size>/val)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="crop sides in pixels")
    ap.add_argument("--crops-per-photo", type=int, default=DEFAULT_CROPS_PER_PHOTO, help="crops per photo per size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-install", action="store_true", help="never apt-get install the photo packages")
    ap.add_argument("--tar", action="store_true", help="also write OUT/{train,val}-<size>-NNNNN.tar shards")
    ap.add_argument("--limit-photos", type=int, default=None, help="use only N photos, evenly spread (for tests)")
    ap.add_argument("--overwrite", action="store_true", help="replace the crops and shards of an earlier build")
    a = ap.parse_args(argv)
    sizes = sorted(set(a.sizes))
    if min(sizes) < 8 or a.crops_per_photo < 1 or (a.limit_photos is not None and a.limit_photos < 1):
        print(f"--sizes must be >= 8, --crops-per-photo and --limit-photos >= 1; got {a.sizes}, "
              f"{a.crops_per_photo}, {a.limit_photos}", file=sys.stderr)
        return 2
    t_start = time.time()
    out = Path(a.out)
    old = old_outputs(out, sizes)
    if old and not a.overwrite:
        print(f"{out} already holds {len(old)} crops or shards of these sizes; pass --overwrite to replace them",
              file=sys.stderr)
        return 1
    for f in old:
        f.unlink()

    ensure_packages(a.no_install)
    # Which of a Plasma wallpaper's sizes is read: fixed for the default sizes, so --sizes 64 alone gives the
    # same 64 px crops as the default build.
    photos = find_photos(work_side(max(*sizes, *DEFAULT_SIZES)))
    unchecked = unchecked_wallpapers()
    if unchecked:  # left out, not silently: a newer package's wallpapers may be photographs worth listing
        print(f"note: left out {len(unchecked)} wallpapers nobody has checked yet ({', '.join(unchecked)}); list "
              "each in scripts/photo_sources.py as a photograph or as drawn")
    if a.limit_photos is not None and a.limit_photos < len(photos):  # evenly spread: every source kind shows up
        photos = [photos[i * len(photos) // a.limit_photos] for i in range(a.limit_photos)]
    if not photos:
        print("nothing to build: no source photo found", file=sys.stderr)
        return 2
    train, val = split_photos(photos, a.seed)
    split_of = {p: "train" for p in train} | {p: "val" for p in val}
    for size in sizes:
        for split in SPLITS:
            (out / str(size) / split).mkdir(parents=True, exist_ok=True)

    def build(photo: Photo) -> Built:
        b = Built(photo, split_of[photo])
        try:
            b.sha256 = source_digest(photo)
            pngs, (b.width, b.height), b.upsampled = photo_crops(photo, sizes, a.crops_per_photo, a.seed)
        except Exception as e:  # noqa: BLE001 - any failure to read or decode: skip the photo, say why
            b.error = f"{type(e).__name__}: {e}"
            return b
        for size, blobs in pngs.items():  # written only once every size decoded: no half-built photo
            for k, blob in enumerate(blobs):
                (out / str(size) / b.split / f"{crop_name(photo, k)}.png").write_bytes(blob)
            b.crops[size] = len(blobs)
        return b

    # PIL decodes, resizes and encodes without the GIL: two threads overlap; more would slow a shared machine.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        built = list(pool.map(build, photos))  # in `photos` order whatever the scheduling
    ok = [b for b in built if not b.error]
    skipped = [b for b in built if b.error]
    for b in skipped:
        print(f"warning: skipped unreadable photo {b.photo.id} ({b.photo.source}): {b.error}", file=sys.stderr)
    if not ok:
        print("nothing built: every source photo was unreadable", file=sys.stderr)
        return 1

    counts = {size: {split: sum(b.crops[size] for b in ok if b.split == split) for split in SPLITS}
              | {"upsampled": sum(b.upsampled[size] for b in ok)} for size in sizes}
    shards: dict[str, list[str]] = {}
    if a.tar:
        for size in sizes:
            for split in SPLITS:
                files = sorted((out / str(size) / split).glob("*.png"))
                names = []
                for s in range(0, len(files), SHARD_SIZE):
                    names.append(f"{split}-{size}-{s // SHARD_SIZE:05d}.tar")
                    write_tar(out / names[-1], files[s:s + SHARD_SIZE])
                shards[f"{split}-{size}"] = names
    kinds: dict[str, int] = {}
    for b in ok:
        kinds[b.photo.kind] = kinds.get(b.photo.kind, 0) + 1
    megapixels = sum(b.width * b.height for b in ok) / 1e6
    manifest = {
        "format": "aetk-photo-corpus", "version": 1, "seed": a.seed, "sizes": sizes,
        "crops_per_photo": a.crops_per_photo, "min_window": MIN_WINDOW,
        "counts": {str(size): c for size, c in counts.items()},  # crops per size and split
        "source_photos": len(ok), "source_megapixels": round(megapixels, 3), "photos_per_kind": kinds,
        "splits": {split: sorted(b.photo.id for b in ok if b.split == split) for split in SPLITS},
        "photos": [{"id": b.photo.id, "kind": b.photo.kind, "source": b.photo.source, "split": b.split,
                    "sha256": b.sha256, "width": b.width, "height": b.height,
                    "megapixels": round(b.width * b.height / 1e6, 3)} for b in ok],
        "skipped": [{"id": b.photo.id, "kind": b.photo.kind, "source": b.photo.source, "error": b.error}
                    for b in skipped],
        "unchecked_wallpapers": unchecked,  # installed, in neither list of photo_sources.py: not read
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    n_train = sum(1 for b in ok if b.split == "train")
    print(f"wrote {sum(sum(c[s] for s in SPLITS) for c in counts.values())} crops of {len(ok)} photos to {out} "
          f"in {time.time() - t_start:.1f} s:")
    for size in sizes:
        c = counts[size]
        extra = f" ({c['upsampled']} upsampled: photo smaller than {size} px)" if c["upsampled"] else ""
        print(f"  {size:4d} px: {c['train']:6d} train, {c['val']:5d} val crops in {out / str(size)}/{{train,val}}"
              f"{extra}")
    print(f"  source photos: {len(ok)} ({', '.join(f'{k} {n}' for k, n in kinds.items())}), {megapixels:.1f} MP, "
          f"{n_train} train / {len(ok) - n_train} val by photo; {len(skipped)} skipped as unreadable")
    if shards:
        print(f"  tar shards: {sum(len(v) for v in shards.values())} in {out} ({{train,val}}-<size>-NNNNN.tar)")
    if not any(counts[size]["val"] for size in sizes):
        print("warning: no val crops (the val photos were unreadable)", file=sys.stderr)
    print(f"  manifest: {out / 'manifest.json'}")
    print(f"train on it: data.path={out}/{sizes[0]}/train data.val_path={out}/{sizes[0]}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
