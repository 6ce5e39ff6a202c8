"""Deterministic, resumable, process-split batches.

The global order is a chain of per-epoch permutations seeded by (seed, epoch). Global micro-batch
j holds positions [j*G, (j+1)*G) of that chain (G = global micro-batch size); process r takes its
r-th slice. Each item carries its epoch so augmentations depend on (seed, epoch, index) only.
Resuming at micro-batch j is arithmetic, not replay, and the split does not change the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from train.config import Config, ConfigError
from train.data.images import ImageDataset, build_image_dataset, collate_images


class _EpochItems(Dataset):
    """Index with (i, epoch) pairs; the wrapped dataset's augmentation reads the epoch."""

    def __init__(self, ds: ImageDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        i, epoch = key
        self.ds.set_epoch(epoch)  # each worker has its own copy, so this is race-free
        return self.ds[i]


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of (index, epoch) for one process, starting at global micro-batch `start`."""

    def __init__(self, n: int, *, global_batch: int, rank: int, world: int, seed: int, start: int = 0) -> None:
        if n < 1:
            raise ValueError("empty dataset")
        self.n, self.global_batch, self.seed, self.start = n, global_batch, seed, start
        self.local = global_batch // world
        self.offset = rank * self.local

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        j = self.start
        cache: dict[int, torch.Tensor] = {}
        while True:
            first = j * self.global_batch + self.offset
            out = []
            for pos in range(first, first + self.local):
                epoch, k = divmod(pos, self.n)
                if epoch not in cache:
                    cache = {epoch: self._perm(epoch)}  # keep one epoch's permutation at a time
                out.append((int(cache[epoch][k]), epoch))
            yield out
            j += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs this for len()
        raise TypeError("StepBatchSampler is infinite")


@dataclass
class Loaders:
    cfg: Config
    rank: int
    world: int
    micro_batch: int
    train_dataset: ImageDataset
    val_dataset: ImageDataset

    def train(self, start_micro_batch: int = 0) -> Iterator[dict]:
        t = self.cfg.train
        sampler = StepBatchSampler(len(self.train_dataset), global_batch=t.batch_size // t.grad_accum,
                                   rank=self.rank, world=self.world, seed=self.cfg.seed, start=start_micro_batch)
        nw = self.cfg.data.num_workers
        loader = DataLoader(_EpochItems(self.train_dataset), batch_sampler=sampler, collate_fn=collate_images,
                            num_workers=nw, persistent_workers=False, prefetch_factor=2 if nw else None)
        return iter(loader)

    def val_batch(self) -> dict:
        n = min(self.cfg.data.val_size, len(self.val_dataset))
        return collate_images([self.val_dataset[i] for i in range(n)])  # stacks "x" of any shape


def build_loaders(cfg: Config, *, rank: int, world: int, micro_batch: int) -> Loaders:
    d = cfg.data
    from train.data.latents import LatentItems, is_latent_dir

    if cfg.model.kind == "ar_prior":  # token shards of `aetk encode`
        from train.data.tokens import TokenItems

        return Loaders(cfg, rank, world, micro_batch, TokenItems(d.path), TokenItems(d.val_path or d.path))
    if is_latent_dir(d.path):  # `aetk encode` output: a prior trains on latents
        latents = LatentItems(d.path)
        val = LatentItems(d.val_path or d.path, scaling_factor=latents.scaling_factor)
        return Loaders(cfg, rank, world, micro_batch, latents, val)
    if cfg.model.kind == "soundstream":  # audio folders: crops of data.segment_seconds at the model's rate
        from train.data.audio import AudioFolder

        sr = cfg.model.codec.sample_rate
        common = dict(sample_rate=sr, segment_samples=round(d.segment_seconds * sr), seed=cfg.seed,
                      silence_db=d.silence_db)
        try:
            train = AudioFolder(d.path, random_crop=d.random_crop, silence_prob=d.silence_prob, **common)
        except ConfigError as e:
            raise ConfigError(f"data.path: {e}") from e
        try:
            val = AudioFolder(d.val_path or d.path, random_crop=False, **common)
        except ConfigError as e:
            raise ConfigError(f"data.val_path: {e}") from e
        return Loaders(cfg, rank, world, micro_batch, train, val)
    if d.path == "builtin:lm-activations":  # a sparse autoencoder trains on a language model's activations
        from train.data.activations import LMActivations

        c = cfg.model.classic
        acts = {s: LMActivations(lm=c.lm, layer=c.lm_layer, n_tokens=c.lm_tokens, split=s) for s in ("train", "val")}
        return Loaders(cfg, rank, world, micro_batch, acts["train"], acts["val"])
    train, val = image_datasets(cfg)
    if cfg.model.kind == "diffusion_prior":  # the pixel-space baseline: the prior's "latents" are images
        from train.data.latents import PixelItems

        train, val = PixelItems(train), PixelItems(val)
    return Loaders(cfg, rank, world, micro_batch, train, val)


def image_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """data.path / data.val_path as image datasets (train split augmented, validation plain)."""
    d = cfg.data
    common = dict(resolution=d.resolution, seed=cfg.seed, image_column=d.image_column, builtin_size=d.builtin_size,
                  holdout_class=d.holdout_class)
    try:
        train = build_image_dataset(d.path, random_crop=d.random_crop, random_flip=d.random_flip,
                                    split="train", **common)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.path: {e}") from e
    val_path = d.val_path or d.path
    try:
        val = build_image_dataset(val_path, random_crop=False, random_flip=False,
                                  split="val" if val_path.startswith("builtin:") else "train", **common)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.val_path: {e}") from e
    return train, val
