"""aetk: train, encode, evaluate and export the autoencoders behind modern generative models.

`aetk.load(path)` returns a saved model ready to use (see `aetk.loading.load`); the command line
is `aetk` (`python -m aetk`). This package is the top layer: it imports the model packages, `eval`
and `train`, and nothing imports it.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"


def load(path: str | Path, *, weights: str = "ema"):
    """The model at `path`, in eval mode (see `aetk.loading.load`)."""
    from aetk.loading import load as load_model  # torch, diffusers, transformers: the CLI starts without them

    return load_model(path, weights=weights)
