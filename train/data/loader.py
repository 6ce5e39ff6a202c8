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

from tokenizers_ae.data.images import collate_images
from tokenizers_ae.data.spread import spread_items
from train.config import Config


class _EpochItems(Dataset):
    """Index with (i, epoch) pairs; the wrapped dataset's augmentation reads the epoch."""

    def __init__(self, ds: Dataset) -> None:
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
    train_dataset: Dataset
    val_dataset: Dataset

    def train(self, start_micro_batch: int = 0) -> Iterator[dict]:
        t = self.cfg.train
        sampler = StepBatchSampler(len(self.train_dataset), global_batch=t.batch_size // t.grad_accum,
                                   rank=self.rank, world=self.world, seed=self.cfg.seed, start=start_micro_batch)
        nw = self.cfg.data.num_workers
        loader = DataLoader(_EpochItems(self.train_dataset), batch_sampler=sampler, collate_fn=collate_images,
                            num_workers=nw, persistent_workers=False, prefetch_factor=2 if nw else None)
        return iter(loader)

    def val_batch(self) -> dict:
        idx = spread_items(0, len(self.val_dataset), self.cfg.data.val_size)  # not the first items: one kind, often
        return collate_images([self.val_dataset[i] for i in idx])  # stacks "x" of any shape


def build_loaders(cfg: Config, datasets: tuple[Dataset, Dataset], *, rank: int, world: int,
                  micro_batch: int) -> Loaders:
    """Loaders over the family's (training, validation) datasets (`Family.datasets`)."""
    return Loaders(cfg, rank, world, micro_batch, *datasets)
