"""Image datasets for autoencoder training: a built-in photo set, image folders and saved HF datasets.

Every item is a dict {"x": (3, R, R) float32 in [-1, 1], "index": int, "bad": list[int]}.
Augmentation draws only from `numpy.random.default_rng([seed, epoch, i])`, so item i is the same
whatever the number of workers or processes; `set_epoch(e)` gives a fresh draw per epoch.
A file that cannot be decoded never stops a run: it is logged once, reported in "bad", and the
next index (i + 1, i + 2, ... mod n) is served in its place.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from tokenizers_ae.data.skipping import SkippingDataset
from tokenizers_ae.files import file_stat

log = logging.getLogger("aetk.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited on white, 16-bit is scaled to 8-bit."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # convert("RGB") would clip 16-bit values at 255 (all white); "I" is how older Pillows open 16-bit PNGs.
        arr = np.asarray(img, dtype=np.float64) / 257.0  # (H, W) in [0, 255] for 16-bit data
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Dropping alpha would expose arbitrary colours under transparent pixels; white is the usual backdrop.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Resize shorter side to `resolution` (bicubic, PIL), crop `resolution`x`resolution` (random or
    center), optional horizontal flip, to float tensor (3, H, W) in [-1, 1]."""

    resolution: int
    random_crop: bool = True
    random_flip: bool = True

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        r = self.resolution
        img = to_rgb(img)
        w, h = img.size
        if min(w, h) != r:
            scale = r / min(w, h)
            w, h = max(r, round(w * scale)), max(r, round(h * scale))
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        if self.random_crop:
            left, top = int(rng.integers(0, w - r + 1)), int(rng.integers(0, h - r + 1))
        else:
            left, top = (w - r) // 2, (h - r) // 2
        x = np.asarray(img.crop((left, top, left + r, top + r)), dtype=np.float32)  # (R, R, 3)
        if self.random_flip and rng.random() < 0.5:
            x = x[:, ::-1]
        x = x / 127.5 - 1.0
        return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()  # (3, R, R)


class ImageDataset(SkippingDataset):
    """Base: deterministic augmentation. `__getitem__(i)` returns {"x": Tensor(3,R,R) float32 in [-1,1],
    "index": int, "bad": list[int]}.

    Randomness comes only from numpy.random.default_rng([seed, epoch, i]) so an item is the same whatever
    the worker count or process count; `set_epoch(e)` changes it per epoch. Never use global RNGs.
    Subclasses implement `__len__`, `load(i) -> PIL.Image` (may raise) and `describe(i) -> str`.
    """

    what = "image"
    class_names: list[str] | None = None
    """Class names when the source labels its images (class sub-folders, a `label` column)."""

    def __init__(self, *, path: str, transform: ImageTransform, seed: int = 0):
        super().__init__(path=path, seed=seed)
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> Image.Image:
        """Decode item i fully (raise on any problem, so errors surface here and not in the transform)."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Human-readable source of item i, for reports of bad items."""
        raise NotImplementedError

    def make(self, raw: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        return self.transform(raw, rng)


def open_image_file(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file raises OSError here
        img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF
        return to_rgb(img)


class ImageFolder(ImageDataset):
    """Every image file under `root`, found recursively in sorted order (hidden files and dirs skipped).

    torchvision's ImageFolder convention gives labels: when every image lies inside one of two or
    more top-level sub-folders, the sub-folder is the class (sorted names -> indices 0..K-1).
    """

    def __init__(self, root: str, *, transform: ImageTransform, seed: int = 0):
        super().__init__(path=root, transform=transform, seed=seed)
        files = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .cache, .ipynb_checkpoints, ...
            files += [os.path.join(dirpath, f) for f in filenames
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
        self.files: list[str] = sorted(files)  # os.walk order depends on the filesystem
        if not self.files:
            raise ValueError(f"no images found in {root} (looked for {', '.join(IMAGE_SUFFIXES)}, any case)")
        tops = [Path(os.path.relpath(f, root)).parts for f in self.files]
        if all(len(t) > 1 for t in tops) and len({t[0] for t in tops}) > 1:
            self.class_names = sorted({t[0] for t in tops})
            index = {c: k for k, c in enumerate(self.class_names)}
            self._labels = [index[t[0]] for t in tops]

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> int | None:
        return self._labels[i] if self.class_names else None

    def load(self, i: int) -> Image.Image:
        return open_image_file(self.files[i])

    def source_stat(self, i: int) -> str:
        return file_stat(self.files[i])

    def describe(self, i: int) -> str:
        return self.files[i]


def _decode_value(value: Any) -> Image.Image:
    """An HF cell -> PIL: a decoded Image() feature, a {"bytes", "path"} dict, or an (H, W[, C]) array."""
    if isinstance(value, Image.Image):
        value.load()
        return to_rgb(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return open_image_file(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return open_image_file(value["path"])
        raise ValueError(f"image dict has neither bytes nor path: keys {sorted(value)}")
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        # Floats are taken as [0, 1] if they fit, else as [0, 255].
        arr = arr.astype(np.float64) * (255.0 if arr.size and arr.max() <= 1.0 else 1.0)
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(arr))


class HFImageDataset(ImageDataset):
    """Column `image_column` of a dataset saved with `datasets.Dataset(Dict).save_to_disk`."""

    def __init__(self, path: str, *, transform: ImageTransform, seed: int = 0, image_column: str = "image",
                 split: str = "train"):
        import datasets  # heavy import, only needed for this source

        super().__init__(path=path, transform=transform, seed=seed)
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                log.info("split %r not in %s (has %s); using %r", split, path, list(ds), next(iter(ds)))
            ds = ds[split] if split in ds else ds[next(iter(ds))]
        if image_column not in ds.column_names:
            raise ValueError(f"column {image_column!r} not in {path}; available columns: {ds.column_names}")
        self.column = image_column
        if "label" in ds.column_names:  # the `datasets` convention for class labels (a ClassLabel feature)
            feature = ds.features["label"]
            self._labels = [int(v) for v in ds["label"]]
            self.class_names = list(getattr(feature, "names", None) or map(str, range(max(self._labels) + 1)))
        self.ds = ds.select_columns([image_column])  # don't decode the other columns per item

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, i: int) -> Image.Image:
        return _decode_value(self.ds[i][self.column])

    def source_stat(self, i: int) -> str:
        """The dataset's Arrow files (any change to them changes every item's fingerprint)."""
        if not hasattr(self, "_stat"):
            self._stat = ",".join(file_stat(f["filename"]) for f in self.ds.cache_files)
        return self._stat

    def label(self, i: int) -> int | None:
        return self._labels[i] if self.class_names else None

    def describe(self, i: int) -> str:
        return f"{self.path}[{i}]"


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "stereo_motorcycle", "camera", "brick", "grass", "gravel", "moon", "clock", "coins")


@functools.cache
def skimage_photos(max_side: int = 512) -> tuple[tuple[str, Image.Image], ...]:
    """The photos shipped inside scikit-image (no downloads), as RGB, shorter side at most `max_side`."""
    import skimage.data  # scikit-image: heavy, only builtin:skimage needs it

    photos = []
    for name in SKIMAGE_PHOTOS:
        arr = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":  # (left, right, disparity): both views are photos
            views = [(f"{name}_left", arr[0]), (f"{name}_right", arr[1])]
        else:
            views = [(name, arr)]
        for view, a in views:
            img = to_rgb(Image.fromarray(a))
            scale = max_side / min(img.size)
            if scale < 1:  # retina is 1411 px: shrink once here, not on every crop
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
            photos.append((view, img))
    return tuple(photos)


class SkimagePhotos(ImageDataset):
    """`size` random square crops of the scikit-image photos: a tiny offline dataset for smoke runs.

    Item i crops photo i % n_photos; its crop (side uniform in [0.25, 1] x the shorter side) is drawn from
    default_rng([seed, i, 0 for train / 1 otherwise]), so the crop set is fixed per seed and differs between
    splits. Only the horizontal flip (train split only) changes with the epoch.
    """

    def __init__(self, *, resolution: int, size: int = 512, seed: int = 0, random_flip: bool = True,
                 split: str = "train"):
        train = split == "train"
        # load() already returns an R x R crop, so the transform only flips and normalises.
        transform = ImageTransform(resolution, random_crop=False, random_flip=random_flip and train)
        super().__init__(path="builtin:skimage", transform=transform, seed=seed)
        self.size, self.split_id = size, 0 if train else 1
        self.photos = skimage_photos()

    def __len__(self) -> int:
        return self.size

    def load(self, i: int) -> Image.Image:
        _, img = self.photos[i % len(self.photos)]
        rng = np.random.default_rng([self.seed, i, self.split_id])
        side = max(1, round(rng.uniform(0.25, 1.0) * min(img.size)))
        left, top = int(rng.integers(0, img.width - side + 1)), int(rng.integers(0, img.height - side + 1))
        r = self.transform.resolution
        return img.crop((left, top, left + side, top + side)).resize((r, r), Image.Resampling.BICUBIC)

    def describe(self, i: int) -> str:
        return f"skimage:{self.photos[i % len(self.photos)][0]}"


def collate_images(items: list[dict]) -> dict[str, Any]:
    """{"x": (B, 3, R, R), "index": LongTensor (B,), "bad": every item's bad indices, concatenated}, plus
    "y": LongTensor (B,) when the items carry labels (builtin:digits)."""
    out = {
        "x": torch.stack([it["x"] for it in items]),  # (B, 3, R, R)
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),  # (B,)
        "bad": [j for it in items for j in it["bad"]],
    }
    if "y" in items[0]:
        out["y"] = torch.tensor([it["y"] for it in items], dtype=torch.long)  # (B,)
    return out
