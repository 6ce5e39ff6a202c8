"""Class labels for sampling a class-conditional prior (`aetk sample --label`), diffusion or AR."""

from __future__ import annotations

import torch

from train.config import ConfigError


def sample_labels(n: int, num_classes: int, label: int | str | None,
                  class_names: list[str] | None = None) -> torch.Tensor | None:
    """(n,) labels: `label` is a class index or name, or a comma-separated list of them cycled over
    the samples; None gives every class in turn. None for an unconditional prior (0 classes)."""
    if num_classes == 0:
        if label is not None:
            raise ConfigError("--label: this prior is unconditional (its data carried no labels)")
        return None
    if label is None:
        return torch.arange(n) % num_classes
    ids = []
    for v in str(label).split(","):
        v = v.strip()
        if class_names and v in class_names:  # names first: digits' classes are named "0".."9"
            ids.append(class_names.index(v))
        elif v.lstrip("-").isdigit():
            ids.append(int(v))
        else:
            raise ConfigError(f"--label {v!r}: not a class name of this prior ({class_names})")
        if not 0 <= ids[-1] < num_classes:
            raise ConfigError(f"--label {ids[-1]}: must be in [0, {num_classes})")
    return torch.tensor([ids[i % len(ids)] for i in range(n)])
