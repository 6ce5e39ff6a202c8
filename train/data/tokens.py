"""Token shards (from `aetk encode` of a VQ tokenizer or an audio codec) as a training dataset for
the AR prior: items {"x": token tensor, "y": class label when the shards carry labels}."""

from __future__ import annotations

import torch

from latent_diffusion.latents import LatentShardDataset
from train.config import ConfigError


class TokenItems(torch.utils.data.Dataset):
    """{"x": (*token_shape) long, "index": i, "bad": []} plus "y": int when the manifest has
    `num_classes` (shards with a `label` tensor).

    The interface of the image datasets (set_epoch, describe, why_unreadable) so the loader and the
    trainer treat both alike; tokens need no augmentation (encode's --flip made the copies).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.ds = LatentShardDataset(path)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.path: {e}") from e
        self.manifest = self.ds.manifest
        if self.ds.item_key != "tokens":
            raise ConfigError(f"data.path: {path} holds {self.manifest['format']}, not token shards; an AR prior "
                              "trains on `aetk encode` of a VQ tokenizer or an audio codec")
        self.token_shape = list(self.manifest["token_shape"])
        self.num_classes = int(self.manifest.get("num_classes") or 0)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        out = {"x": item["tokens"], "index": int(i), "bad": []}
        if self.num_classes:
            out["y"] = item["label"]
        return out

    def set_epoch(self, epoch: int) -> None:
        pass

    def describe(self, i: int) -> str:
        return f"{self.path}[{i}]"

    def why_unreadable(self, i: int) -> str:
        return ""

