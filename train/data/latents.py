"""Latent shards (from `aetk encode`) as a training dataset for priors: items {"x": scaled latent}."""

from __future__ import annotations

from pathlib import Path

import torch

from latent_diffusion.latents import LatentShardDataset


def is_latent_dir(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


class ShardItems(torch.utils.data.Dataset):
    """`aetk encode` shards as training items {"x": the shard tensor, "index": i, "bad": []}, plus
    "y": class index when the encoded source was labelled.

    The interface of the image datasets (set_epoch, describe, why_unreadable) so the loader and
    trainer treat both alike; shards need no augmentation (encode's --flip made the copies).
    """

    def __init__(self, path: str, ds: LatentShardDataset) -> None:
        self.path, self.ds = path, ds
        self.manifest = ds.manifest
        self.num_classes, self.class_names = ds.num_classes, ds.class_names

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        out = {"x": item[self.ds.item_key], "index": int(i), "bad": []}
        if "label" in item:
            out["y"] = item["label"]
        return out

    def set_epoch(self, epoch: int) -> None:
        pass

    def describe(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def why_unreadable(self, i: int) -> str:
        return ""


class LatentItems(ShardItems):
    """KL latents times the manifest's scaling factor (unit variance): a diffusion prior's data."""

    def __init__(self, path: str, *, scaling_factor: float | None = None) -> None:
        super().__init__(path, LatentShardDataset(path, scale=True))
        if scaling_factor is not None:  # validation latents scale like the training latents they sit beside
            self.ds.scaling_factor = scaling_factor
        self.latent_shape = list(self.manifest["latent_shape"])
        self.scaling_factor = self.ds.scaling_factor


class PixelItems(torch.utils.data.Dataset):
    """An image dataset seen as a prior's data (the pixel-space baseline): items pass through, the
    "latent" is the (C, R, R) image in [-1, 1] and the scaling factor is 1."""

    def __init__(self, images) -> None:
        self.images = images
        self.latent_shape = list(images[0]["x"].shape)
        self.scaling_factor = 1.0
        self.class_names = list(getattr(images, "class_names", None) or [])
        self.num_classes = len(self.class_names)
        self.path = images.path

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return self.images[i]

    def set_epoch(self, epoch: int) -> None:
        self.images.set_epoch(epoch)

    def describe(self, i: int) -> str:
        return self.images.describe(i)

    def why_unreadable(self, i: int) -> str:
        return self.images.why_unreadable(i)


def prior_items(cfg) -> LatentItems | PixelItems:
    """The training data of a diffusion prior: encoded latents, or images for the pixel baseline."""
    if is_latent_dir(cfg.data.path):
        return LatentItems(cfg.data.path)
    from train.data.loader import image_datasets

    return PixelItems(image_datasets(cfg)[0])
