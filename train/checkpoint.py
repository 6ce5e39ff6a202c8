"""Atomic, resumable checkpoints.

A checkpoint is written to `checkpoints/.tmp-step-N/`, completed with a `COMPLETE` marker, then
renamed to `checkpoints/step-N/` in one `os.replace`. A kill at any moment leaves either the old
newest checkpoint or the new one, never a half-written one that resume would pick.

Contents: accelerate's `save_state` (models as safetensors, optimizers, schedulers), each process's
random-number state in `rng_state_{rank}.safetensors` (accelerate's own is a pickle, which its
loader ignores silently when it cannot read it, so it is replaced), `extra.safetensors` (EMA weights
and other tensors), `trainer_state.json`, the resolved `config.yaml` and `model_config.json` (the
trained model's class and architecture, so `aetk.load` rebuilds it without the recipe). COMPLETE
records every file's size and sha256: a damaged or altered file is found before anything loads.
Loading never unpickles arbitrary objects: accelerate's loader uses `torch.load(weights_only=True)`
and we add only safetensors and JSON.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from tokenizers_ae.files import fault_point
from tokenizers_ae.precision import training_precision
from tokenizers_ae.pretrained import (
    CHECKPOINT_MODEL,
    COMPLETE,
    LoadError,
    checkpoint_dirs,
    checkpoint_files,
    checkpoint_problem,
    read_safetensors,
)
from train.config import Config, ConfigError, RunError
from train.recipe import config_yaml, load_config

log = logging.getLogger("aetk.checkpoint")
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


def rng_state() -> dict[str, torch.Tensor]:
    """This process's random-number generators (Python, NumPy, torch CPU and CUDA) as tensors."""
    version, py_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": torch.tensor(py_state, dtype=torch.int64),
           "python_meta": torch.tensor([version, float("nan") if gauss is None else gauss], dtype=torch.float64),
           "numpy": torch.from_numpy(keys.astype(np.int64)),
           "numpy_meta": torch.tensor([pos, has_gauss, cached], dtype=torch.float64)}
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what `rng_state` returned."""
    version, gauss = state["python_meta"].tolist()
    random.setstate((int(version), tuple(int(v) for v in state["python"].tolist()),
                     None if gauss != gauss else gauss))  # NaN: no cached Gaussian
    pos, has_gauss, cached = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


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
    rank = accelerator.process_index
    (tmp / f"random_states_{rank}.pkl").unlink(missing_ok=True)  # replaced by a safetensors file:
    save_file(rng_state(), tmp / f"rng_state_{rank}.safetensors")
    if accelerator.is_main_process:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, tmp / "extra.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **state}, indent=1))
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / CHECKPOINT_MODEL).write_text(model_config)
    accelerator.wait_for_everyone()
    fault_point("kill_in_save", step)
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        record = {"step": step, "files": checkpoint_files(tmp)}
        (tmp / COMPLETE).write_text(json.dumps(record, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_tree(root)
        for _, old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, *,
                    verified: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore accelerate's state and the random-number state from `path` after checking every file
    against COMPLETE (unless the caller just did: `verified`); return (trainer_state, extra tensors)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"resume={path}: no such checkpoint directory")
    problem = None if verified else checkpoint_problem(path)
    if problem is not None:
        raise CheckpointError(f"refusing to load {path}: {problem}")
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
    except RuntimeError as e:  # the recipe's architecture is not the checkpoint's: torch lists the keys
        raise CheckpointError(f"cannot resume from {path}: its weights do not fit this recipe's model (an "
                              f"architecture key changed? use resume=never or a new output_dir): "
                              f"{' '.join(str(e).split())[:400]}") from None
    rng = path / f"rng_state_{accelerator.process_index}.safetensors"
    try:
        if rng.is_file():  # aetk 0.1 checkpoints kept accelerate's pickle, which it restored above
            set_rng_state(read_safetensors(rng))
        return state, read_safetensors(path / "extra.safetensors")
    except LoadError as e:
        raise CheckpointError(f"refusing to load {path}: {e}") from None


RESUMABLE = ("output_dir", "resume", "train.max_steps", "train.log_every", "train.eval_every",
             "train.checkpoint_every", "train.keep_checkpoints", "train.progress", "train.curves",
             "train.max_nonfinite", "data.num_workers")
"""Recipe keys that may differ from a checkpoint's when resuming it: when and how the run reports and
saves, and how long it runs. Anything else (a learning rate, an architecture, the data) would run
with the checkpoint's optimizer, schedule and weights while config.yaml claimed otherwise."""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_resumable(cfg: Config, path: Path) -> Config | None:
    """ConfigError naming every key in which `cfg` differs from the recipe the checkpoint at `path`
    was written with, beyond RESUMABLE; returns that recipe (a Config). A checkpoint of aetk 0.1 (its
    recipe in 0.1's keys) is not compared (logged): None."""
    ckpt_yaml = Path(path) / "config.yaml"
    if not ckpt_yaml.is_file():
        raise CheckpointError(f"resume={path}: not a checkpoint of aetk train (no config.yaml)")
    try:
        before = load_config(ckpt_yaml)
    except ConfigError as e:
        log.warning("not comparing the recipe with %s's (written by an older aetk: %s)", path, e)
        return None
    old, new = (_flat(yaml.safe_load(config_yaml(c))) for c in (before, cfg))
    # What ran, not how it was asked for: a run begun with `bf16` resumes under `auto` where auto is bf16.
    key, asked = "train.mixed_precision", (before.train.mixed_precision, cfg.train.mixed_precision)
    old[key], new[key] = (training_precision(a) for a in asked)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE)
    if changed:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                           + (f" (asked: {asked[0]!r} -> {asked[1]!r})" if k == key else "") for k in changed[:6])
        raise ConfigError(f"cannot resume {path} with a different recipe ({detail}); use resume=never or a new "
                          f"output_dir (only {', '.join(RESUMABLE[2:])} may change when resuming)")
    return before
