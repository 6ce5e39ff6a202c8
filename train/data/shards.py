"""`aetk encode` shards as training data for priors: scaled KL latents (diffusion), tokens (AR),
and images seen as a prior's data (the pixel-space baseline)."""

from __future__ import annotations

from pathlib import Path

import torch

from latent_diffusion.shards import LatentShardDataset
from train.config import ConfigError


def is_latent_dir(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def open_shards(path: str, key: str, **kw) -> LatentShardDataset:
    """The encode at `path`; ConfigError naming `key` (data.path / data.val_path) when it is not one."""
    try:
        return LatentShardDataset(path, **kw)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


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
    """KL latents shifted and scaled by the manifest's factors (zero mean when shifted, unit variance): a
    diffusion prior's data."""

    def __init__(self, path: str, *, scaling_factor: float | None = None, shift_factor: float | None = None,
                 key: str = "data.path") -> None:
        ds = open_shards(path, key, scale=True)
        if ds.item_key != "latent":
            raise ConfigError(f"{key}: {path} holds {ds.manifest['format']}, not KL latents; a diffusion prior "
                              "trains on `aetk encode` of a KL-VAE")
        super().__init__(path, ds)
        if scaling_factor is not None:  # validation latents scale like the training latents they sit beside
            self.ds.scaling_factor = scaling_factor
        if shift_factor is not None:
            self.ds.shift_factor = shift_factor
        self.latent_shape = list(self.manifest["latent_shape"])
        self.scaling_factor, self.shift_factor = self.ds.scaling_factor, self.ds.shift_factor
        self.space = "latent"


class PixelItems(torch.utils.data.Dataset):
    """An image dataset seen as a prior's data (the pixel-space baseline): items pass through, the
    "latent" is the (C, R, R) image in [-1, 1] and the scaling factor is 1."""

    def __init__(self, images) -> None:
        self.images = images
        self.latent_shape = list(images[0]["x"].shape)
        self.scaling_factor, self.shift_factor = 1.0, 0.0
        self.space = "pixel"
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


class TokenItems(ShardItems):
    """{"x": (*token_shape) long, "index": i, "bad": []} plus "y": int when the manifest has
    `num_classes` (shards with a `label` tensor)."""

    def __init__(self, path: str, *, key: str = "data.path") -> None:
        ds = open_shards(path, key)
        if ds.item_key != "tokens":
            raise ConfigError(f"{key}: {path} holds {ds.manifest['format']}, not token shards; an AR prior "
                              "trains on `aetk encode` of a VQ tokenizer or an audio codec")
        super().__init__(path, ds)
