"""Image sources by path: the one place that turns `data.path` into a dataset."""

from __future__ import annotations

from pathlib import Path

from tokenizers_ae.data.digits import Digits
from tokenizers_ae.data.images import HFImageDataset, ImageDataset, ImageFolder, ImageTransform, SkimagePhotos
from tokenizers_ae.data.tar_shards import TarShardImages, tar_paths


def build_image_dataset(path: str, *, resolution: int, seed: int = 0, random_crop: bool = True,
                        random_flip: bool = True, image_column: str = "image", builtin_size: int = 512,
                        split: str = "train", holdout_class: int | None = None) -> ImageDataset:
    """"builtin:skimage" -> SkimagePhotos; "builtin:digits" -> scikit-learn's digits (`tokenizers_ae.data.digits`,
    `holdout_class` left out of its train split); a `save_to_disk` directory -> HFImageDataset; a .tar file or a
    directory of .tar shards -> TarShardImages; any other directory -> ImageFolder. Raises FileNotFoundError for a missing path, ValueError for a folder without images."""
    if path == "builtin:digits":
        return Digits(split=split, resolution=resolution, holdout_class=holdout_class)
    if path == "builtin:skimage":
        return SkimagePhotos(resolution=resolution, size=builtin_size, seed=seed, random_flip=random_flip,
                             split=split)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    transform = ImageTransform(resolution, random_crop=random_crop, random_flip=random_flip)
    if tar_paths(root):  # WebDataset-style tar shards (a .tar file or a directory of them)
        return TarShardImages(str(root), transform=transform, seed=seed)
    if not root.is_dir():
        raise ValueError(f"dataset path must be a directory, a .tar shard or 'builtin:skimage', got file {path}")
    if any((root / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return HFImageDataset(str(root), transform=transform, seed=seed, image_column=image_column, split=split)
    return ImageFolder(str(root), transform=transform, seed=seed)
