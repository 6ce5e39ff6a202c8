"""Atomic, resumable checkpoints.

A checkpoint is written to `checkpoints/.tmp-step-N/`, completed with a `COMPLETE` marker, then
renamed to `checkpoints/step-N/` in one `os.replace`. A kill at any moment leaves either the old
newest checkpoint or the new one, never a half-written one that resume would pick.

Contents: accelerate's `save_state` (models as safetensors, optimizers, schedulers, RNG states,
one file per process where needed), `extra.safetensors` (EMA weights and other tensors),
`trainer_state.json`, the resolved `config.yaml` and `model_config.json` (the trained model's class
and architecture, so `aetk.load` rebuilds it without the recipe: `tokenizers_ae.pretrained`).
Loading never unpickles arbitrary objects: accelerate's loader uses `torch.load(weights_only=True)`
and we add only safetensors and JSON.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tokenizers_ae.files import fault_point
from tokenizers_ae.pretrained import CHECKPOINT_MODEL, checkpoint_dirs
from train.config import RunError

FORMAT_VERSION = 1


class CheckpointError(RunError):
    """A checkpoint that cannot be loaded safely or at all."""


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator, root: Path, step: int, *, extra: dict[str, torch.Tensor],
                    state: dict[str, Any], config_yaml: str, model_config: str, keep: int) -> Path:
    """Collective: every process calls it. Returns the final directory."""
    root = Path(root)
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, tmp / "extra.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / CHECKPOINT_MODEL).write_text(model_config)
    accelerator.wait_for_everyone()
    fault_point("kill_in_save", step)
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        (tmp / "COMPLETE").write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_tree(root)
        for _, old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore accelerate's state from `path`; return (trainer_state, extra tensors)."""
    path = Path(path)
    if not (path / "COMPLETE").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')} is not "
                              f"supported (this aetk reads format {FORMAT_VERSION})")
    try:
        accelerator.load_state(str(path), strict=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: a file in it holds pickled objects that are not plain tensors "
            f"and could run code when loaded ({str(e).splitlines()[0]}). Only load checkpoints you made."
        ) from e
    return state, load_file(path / "extra.safetensors")
