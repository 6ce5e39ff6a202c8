"""The contract every file-backed dataset shares: deterministic items, and unreadable files skipped.

`__getitem__(i)` returns {"x": Tensor, "index": i, "bad": [indices skipped on the way]}. Randomness
comes only from numpy.random.default_rng([seed, epoch, i]), so an item is the same whatever the
worker or process count; `set_epoch(e)` gives a fresh draw per epoch. A file that cannot be decoded
never stops a run: it is remembered, reported in "bad", and the next index (i + 1, i + 2, ... mod n)
is served in its place, seeded by the requested index so the stand-in is deterministic too.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger("aetk.data")


class SkippingDataset(torch.utils.data.Dataset):
    """Subclasses set `what` ("image", "audio file"), call `__init__(path=, seed=)` and implement
    `__len__`, `load(i)` (decode fully; raise on any problem), `describe(i)` and `make(raw, rng)`."""

    what = "item"

    def __init__(self, *, path: str, seed: int = 0) -> None:
        self.path, self.seed, self.epoch = str(path), seed, 0
        self._bad: set[int] = set()  # per process: each DataLoader worker keeps its own

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, i: int) -> Any:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Human-readable source of item i, for reports of bad items."""
        raise NotImplementedError

    def make(self, raw: Any, rng: np.random.Generator) -> torch.Tensor:
        """The training tensor from a decoded item (augmentation, crops)."""
        raise NotImplementedError

    def label(self, i: int) -> int | None:
        """Class index of item i for labelled sources, else None (items then carry no "y")."""
        return None

    def source_stat(self, i: int) -> str | None:
        """A cheap fingerprint of item i's source file (`tokenizers_ae.files.file_stat`), None when
        the data is not file-backed: `aetk encode` compares it to find replaced sources."""
        return None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _try_load(self, j: int) -> Any | None:
        if j in self._bad:  # known bad: don't pay for decoding it again, and warn only once
            return None
        try:
            return self.load(j)
        except Exception as e:  # noqa: BLE001 - any decoder failure must not stop a run
            self._bad.add(j)
            # DEBUG here: workers each hold a copy of `_bad`; the consumer warns once per file.
            log.debug("skipping unreadable %s %s: %s: %s", self.what, self.describe(j), type(e).__name__, e)
            return None

    def why_unreadable(self, i: int) -> str:
        """The decoder's error for item i ("" if it now reads), for a consumer's one warning."""
        try:
            self.load(i)
            return ""
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self)
        i = int(i)
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for dataset of size {n}")
        bad: list[int] = []
        for k in range(n):
            j = (i + k) % n
            raw = self._try_load(j)
            if raw is None:
                bad.append(j)
                continue
            item = {"x": self.make(raw, np.random.default_rng([self.seed, self.epoch, i])), "index": i, "bad": bad}
            label = self.label(j)
            if label is not None:  # the stand-in's own label: a skipped file never mislabels an image
                item["y"] = label
            return item
        raise ValueError(f"no readable {self.what} in {self.path} ({n} items tried)")
