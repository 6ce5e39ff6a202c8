"""Where trained models live on disk, and aetk's own format for models no ecosystem format holds.

A model is read from any of:
- an export directory: aetk's native format (`aetk_model.json` + `model.safetensors`), or an
  ecosystem format (a diffusers AutoencoderKL / VQModel directory, a prior directory with
  `prior.json`), or a Stable Diffusion single `.safetensors` file;
- a checkpoint of `aetk train` (`checkpoints/step-N/`, marked COMPLETE): `model_config.json`
  names the class and its config; the averaged weights sit in `extra.safetensors` under
  `ema.module.`, the raw ones in `model.safetensors` under the prefix recorded there;
- a run directory: its newest complete checkpoint, else its `model/` export.

`locate(path)` says what a path holds without building anything (a `Saved` record); each model
class builds itself from one (`from_saved`). Nothing here imports the trainer: a model loads,
encodes and decodes with the model packages alone.

Native format, version 2: `aetk_model.json` = {"format": "aetk-model", "version": 2, "class": NAME,
"config": {...}} (what NAME's `from_config` rebuilds) and `model.safetensors` (its state dict).
Version 1 (aetk 0.1) stored the training recipe's model section instead of a config; it is still
read (`Saved.legacy`), as are checkpoints written before `model_config.json` existed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

NATIVE_CONFIG = "aetk_model.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_VERSION = 2
CHECKPOINT_MODEL = "model_config.json"
"""Written into every checkpoint: {"class", "config", "raw_prefix", "ema"}."""
COMPLETE = "COMPLETE"
EMA_WEIGHTS = "extra.safetensors"
EMA_PREFIX = "ema.module."
RAW_WEIGHTS = "model.safetensors"
"""accelerate's file for the first prepared module: the phase that trains the model."""

DIFFUSERS_CLASSES = {"AutoencoderKL": "KLVAE", "VQModel": "VQVAE", "AutoencoderKLWan": "VideoVAE"}
"""diffusers `_class_name` -> the aetk class that loads it."""
PRIOR_CLASSES = {"diffusion_prior": "DiffusionPrior", "ar_prior": "ARPrior"}
"""`prior.json` kind -> class."""
LEGACY_CLASSES = {"kl_vae": "KLVAE", "vq_vae": "VQVAE", "soundstream": "SoundStream", "classic": "classic",
                  "diffusion_prior": "DiffusionPrior", "ar_prior": "ARPrior"}
"""aetk 0.1's `model.kind` -> class."""

_STEP_DIR = re.compile(r"^step-(\d+)$")
log = logging.getLogger("aetk.checkpoint")


class LoadError(ValueError):
    """A path that holds no model of the kind asked for, or a damaged one; the message names the path."""


# --- checkpoints --------------------------------------------------------------------------------

def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` (a run's `checkpoints/`), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(path: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file in a checkpoint directory but COMPLETE:
    what the COMPLETE marker records when the checkpoint is written."""
    return {str(f.relative_to(path)): {"size": f.stat().st_size, "sha256": file_sha256(f)}
            for f in sorted(path.rglob("*")) if f.is_file() and f.name != COMPLETE}


def checkpoint_problem(path: Path, *, hashes: bool = True) -> str | None:
    """Why the checkpoint at `path` cannot be trusted (one line naming the file), or None. COMPLETE
    lists every file's size and sha256; a missing, shorter, longer or altered file is named. With
    `hashes=False` only sizes are compared (cheap). A checkpoint of aetk 0.1, whose COMPLETE holds
    only the step, is trusted as complete."""
    marker = path / COMPLETE
    if not marker.is_file():
        return f"{path} is not a complete checkpoint (no {COMPLETE} marker)"
    text = marker.read_text().strip()
    if not text.startswith("{"):  # aetk 0.1: the step number only
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return f"{marker} is damaged (not the JSON aetk writes)"
    for name, want in record.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{f} is {size} bytes, but {want['size']} were written (truncated or damaged)"
        if hashes and file_sha256(f) != want["sha256"]:
            return f"{f} does not match the checksum recorded when it was written (damaged or altered)"
    return None


def latest_checkpoint(root: Path, *, hashes: bool = False) -> Path | None:
    """The newest checkpoint under `root` that is intact (`checkpoint_problem`); each newer damaged
    one is skipped with a warning naming its problem. None when there is none."""
    for _, path in reversed(checkpoint_dirs(root)):
        problem = checkpoint_problem(path, hashes=hashes)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path.name, problem)
    return None


# --- what a path holds --------------------------------------------------------------------------

@dataclass(frozen=True)
class Saved:
    """A located model: its class, its config, and where its weights are."""

    path: Path
    """The export directory, checkpoint directory or single file the model is read from."""
    source: Literal["native", "checkpoint", "diffusers", "single_file", "prior"]
    class_name: str
    """"KLVAE", "VQVAE", "SoundStream", "DiffusionPrior", "ARPrior" or "classic"."""
    config: dict | None = None
    """native and checkpoint sources: what the class's `from_config` rebuilds."""
    legacy: dict | None = None
    """Written by aetk 0.1: {"model": its recipe's model section, "data": its data section}."""
    weights: str = "ema"
    """Checkpoints: `ema` (the averaged weights) or `raw`."""
    raw_prefix: str = ""
    """Checkpoints: the model's key prefix in the raw weights."""

    @property
    def run_dir(self) -> Path | None:
        """The run a checkpoint belongs to (for what training measured at the end, in `model/`)."""
        return self.path.parent.parent if self.source == "checkpoint" else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights, keyed as the model itself (native and checkpoint sources)."""
        if self.source == "native":
            return read_safetensors(self.path / NATIVE_WEIGHTS)
        if self.source != "checkpoint":
            raise LoadError(f"{self.path}: a {self.source} source has no aetk state dict")
        if self.weights == "ema":
            state, prefix = read_safetensors(self.path / EMA_WEIGHTS), EMA_PREFIX
            if not any(k.startswith(prefix) for k in state):
                raise LoadError(f"{self.path} holds no EMA weights (train.ema_decay was off); use weights=raw "
                                "(--weights raw)")
        else:
            state, prefix = read_safetensors(self.path / RAW_WEIGHTS), self.raw_prefix
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; LoadError naming the file when it is missing or damaged."""
    if not path.is_file():
        raise LoadError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise LoadError(f"{path}: unreadable or damaged safetensors file ({e})") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(value, dict):
        raise LoadError(f"{path}: expected a JSON object")
    return value


def locate(path: str | Path, *, weights: str = "ema") -> Saved:
    """What `path` holds (see the module docstring); LoadError naming the path when it holds no model."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    p = Path(path)
    if not p.exists():
        raise LoadError(f"{p}: no such file or directory")
    if p.is_file():
        if p.suffix == ".safetensors":
            return Saved(p, "single_file", "KLVAE")
        raise LoadError(f"{p}: a file, but not a .safetensors single file; expected a run directory, a "
                        "checkpoint, an exported model directory or an SD single file")
    if (p / COMPLETE).is_file():
        return _checkpoint(p, weights)
    ckpt = latest_checkpoint(p / "checkpoints")
    if ckpt is not None:
        return _checkpoint(ckpt, weights)
    if (p / NATIVE_CONFIG).is_file():
        return _native(p)
    if (p / "prior.json").is_file():
        kind = _read_json(p / "prior.json").get("kind")
        if kind not in PRIOR_CLASSES:
            raise LoadError(f"{p}/prior.json: unknown prior kind {kind!r}")
        return Saved(p, "prior", PRIOR_CLASSES[kind])
    if (p / "config.json").is_file():
        config = _read_json(p / "config.json")
        name = config.get("_class_name")
        if name is None and config.get("architectures"):  # a transformers export, e.g. --format encodec
            raise LoadError(f"{p}: a transformers {config['architectures'][0]} directory, which aetk writes but does "
                            "not read back; load the aetk model it was exported from (or export --format aetk)")
        if name not in DIFFUSERS_CLASSES:
            raise LoadError(f"{p}: a diffusers {name} directory; aetk loads {', '.join(DIFFUSERS_CLASSES)}")
        return Saved(p, "diffusers", DIFFUSERS_CLASSES[name])
    if (p / "model").is_dir():
        return locate(p / "model", weights=weights)
    if (p / "config.yaml").is_file():
        raise LoadError(f"{p}: a run with no complete checkpoint or exported model yet (wait for "
                        "train.checkpoint_every steps)")
    raise LoadError(f"{p}: not a run directory, checkpoint, exported model directory or SD single file")


def _native(p: Path) -> Saved:
    meta = _read_json(p / NATIVE_CONFIG)
    if meta.get("format") != "aetk-model":
        raise LoadError(f"{p}/{NATIVE_CONFIG}: format {meta.get('format')!r} is not aetk-model")
    version = meta.get("version")
    if version == NATIVE_VERSION:
        return Saved(p, "native", str(meta.get("class")), config=meta.get("config") or {})
    if version == 1:  # aetk 0.1: the training recipe's model section
        recipe = meta.get("recipe") or {}
        return Saved(p, "native", LEGACY_CLASSES.get(recipe.get("kind"), str(recipe.get("kind"))),
                     legacy={"model": recipe, "data": meta.get("data") or {}})
    raise LoadError(f"{p}/{NATIVE_CONFIG}: format version {version} is not supported (this aetk reads "
                    f"1 and {NATIVE_VERSION}); upgrade aetk")


def _checkpoint(p: Path, weights: str) -> Saved:
    if (p / CHECKPOINT_MODEL).is_file():
        meta = _read_json(p / CHECKPOINT_MODEL)
        if weights == "ema" and not meta.get("ema", True):
            weights = "raw"  # trained without an average: the raw weights are the model
        return Saved(p, "checkpoint", str(meta["class"]), config=meta["config"], weights=weights,
                     raw_prefix=meta.get("raw_prefix", ""))
    # Written before model_config.json existed: the model is described by the run's recipe.
    try:
        recipe = yaml.safe_load((p / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LoadError(f"{p}: a checkpoint without {CHECKPOINT_MODEL} or a readable config.yaml ({e})") from None
    model = recipe.get("model") or {}
    if weights == "ema" and not (recipe.get("train") or {}).get("ema_decay", 0.999):
        weights = "raw"
    kind = model.get("kind", "kl_vae")
    return Saved(p, "checkpoint", LEGACY_CLASSES.get(kind, str(kind)), weights=weights,
                 raw_prefix="" if kind.endswith("_prior") else "autoencoder.",
                 legacy={"model": model, "data": recipe.get("data") or {}})


def apply_measured(config_owner, saved: Saved, keys: tuple[str, ...]) -> None:
    """Copy what training measured on its data at the end (e.g. the latent scaling) from the run's
    `model/config.json` into a model loaded from one of its checkpoints (`config_owner`: the diffusers
    model whose config holds those `keys`)."""
    measured = saved.run_dir / "model" / "config.json" if saved.run_dir else None
    if measured is not None and measured.is_file():
        done = _read_json(measured)
        config_owner.register_to_config(**{k: done[k] for k in keys if k in done})


def expect(saved: Saved, class_name: str, what: str) -> None:
    """LoadError when `saved` holds another class than `class_name` (`what`: e.g. "an audio codec")."""
    if saved.class_name != class_name:
        raise LoadError(f"{saved.path} holds a {saved.class_name} model, not {what}")


# --- writing ------------------------------------------------------------------------------------

def plain_config(config) -> dict:
    """A diffusers model's config without the loader's bookkeeping (`_name_or_path`, which from_pretrained
    sets to whatever path object it was given, `_class_name`, `_diffusers_version`): what rebuilds it."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """ValueError when any floating tensor holds NaN or infinity: such weights are never written."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{where}: {len(bad)} of {len(state)} tensors hold NaN or infinite values (first: "
                         f"{bad[0]}); the model diverged, so nothing was written")


def prepare_dir(out: str | Path) -> Path:
    """`out` as a directory to write a model into; ValueError when it is an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; a model is written as a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_native(model: torch.nn.Module, out: str | Path, *, class_name: str, config: dict[str, Any]) -> Path:
    """`model` in aetk's native format (see the module docstring). The JSON is written last, so a
    directory without it is an incomplete write, never a model."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, f"{type(model).__name__} for {out}")
    out = prepare_dir(out)
    (out / NATIVE_CONFIG).unlink(missing_ok=True)
    save_file(state, out / NATIVE_WEIGHTS)
    meta = {"format": "aetk-model", "version": NATIVE_VERSION, "class": class_name, "config": config}
    (out / NATIVE_CONFIG).write_text(json.dumps(meta, indent=1, default=_json_default))
    return out


def checkpoint_model_meta(class_name: str, config: dict, *, raw_prefix: str, ema: bool) -> str:
    """The `model_config.json` text a checkpoint carries (see `Saved`)."""
    return json.dumps({"class": class_name, "config": config, "raw_prefix": raw_prefix, "ema": ema}, indent=1,
                      default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Strict `load_state_dict`; LoadError naming `where` when the weights do not fit the architecture."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing / unexpected keys or other shapes, listed by torch
        detail = " ".join(str(e).split())
        raise LoadError(f"{where}: the weights do not fit the architecture they were saved with ({detail[:400]})") \
            from None


class Pretrained:
    """`save_pretrained` / `from_pretrained` for an aetk model (mixed into an `nn.Module`).

    A subclass sets `saved_name` and implements `pretrained_config()` (a JSON-able dict) and
    `from_config(config)` (a fresh model of that architecture); models stored in an ecosystem format
    override `save_pretrained` and `from_saved` for it. `from_legacy` rebuilds a model of aetk 0.1
    from its recipe sections.
    """

    saved_name: str = ""
    saved_what: str = "a model"
    """For messages: what the class is ("an audio codec")."""

    def pretrained_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        raise NotImplementedError

    @classmethod
    def from_legacy(cls, legacy: dict):
        raise LoadError(f"{cls.__name__} has no reader for aetk 0.1 files")

    def save_pretrained(self, out: str | Path) -> Path:
        """Write the model to the directory `out` (aetk's native format); `from_pretrained(out)` reads it."""
        return save_native(self, out, class_name=self.saved_name, config=self.pretrained_config())

    @classmethod
    def from_pretrained(cls, path: str | Path, *, weights: str = "ema"):
        """The model, in eval mode, from an export directory, a checkpoint or a run directory (see
        the module docstring). `weights`: a checkpoint's averaged (`ema`) or `raw` weights."""
        return cls.from_saved(locate(path, weights=weights))

    @classmethod
    def from_saved(cls, saved: Saved):
        expect(saved, cls.saved_name, cls.saved_what)
        if saved.legacy is not None:
            model = cls.from_legacy(saved.legacy)
        elif saved.config is not None:
            model = cls.from_config(saved.config)
        else:
            raise LoadError(f"{saved.path}: no config to build a {cls.__name__} from")
        load_state(model, saved.state_dict(), saved.path)
        return model.eval()
