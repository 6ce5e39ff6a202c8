"""Token shards (from `aetk encode` of a VQ tokenizer or an audio codec) as a training dataset for
the AR prior: items {"x": token tensor, "y": class label when the shards carry labels}."""

from __future__ import annotations

from latent_diffusion.latents import LatentShardDataset
from train.config import ConfigError
from train.data.latents import ShardItems


class TokenItems(ShardItems):
    """{"x": (*token_shape) long, "index": i, "bad": []} plus "y": int when the manifest has
    `num_classes` (shards with a `label` tensor)."""

    def __init__(self, path: str) -> None:
        try:
            ds = LatentShardDataset(path)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.path: {e}") from e
        if ds.item_key != "tokens":
            raise ConfigError(f"data.path: {path} holds {ds.manifest['format']}, not token shards; an AR prior "
                              "trains on `aetk encode` of a VQ tokenizer or an audio codec")
        super().__init__(path, ds)
        self.token_shape = list(self.manifest["token_shape"])
