"""Latent shards (from `aetk encode`) as a training dataset for priors: items {"x": scaled latent}."""

from __future__ import annotations

from pathlib import Path

import torch

from latent_diffusion.latents import LatentShardDataset


def is_latent_dir(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


class LatentItems(torch.utils.data.Dataset):
    """{"x": (c, h, w) latent times the manifest's scaling factor, "index": i, "bad": []}.

    The interface of the image datasets (set_epoch, describe, why_unreadable) so the loader and
    trainer treat both alike; latents need no augmentation (encode's --flip made the copies).
    """

    def __init__(self, path: str) -> None:
        self.ds = LatentShardDataset(path, scale=True)
        self.path = path
        self.latent_shape = list(self.ds.manifest["latent_shape"])
        self.scaling_factor = self.ds.scaling_factor

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.ds[i]["latent"], "index": int(i), "bad": []}

    def set_epoch(self, epoch: int) -> None:
        pass

    def describe(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def why_unreadable(self, i: int) -> str:
        return ""
