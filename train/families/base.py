"""What a family is: one row of the family table, and the typed requests its hooks receive.

A family is everything `model.kind` decides: its recipe sections, how to build the model and the
training task, its datasets, what the periodic evaluation and the final export do, and what the
command line's `encode`, `eval`, `export` and `sample` do with a model of it. The loop, the
command line and the evaluation ask the table (`train.families.FAMILIES`); nothing else branches on
the kind.

This module and the family modules import nothing heavy at load time: the recipe is validated
from their sections alone, before torch loads. Their hooks import what they wire when called.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers_ae.data import BUILTIN_DIGITS
from train.config import Config

if TYPE_CHECKING:  # annotations only
    import torch
    from torch import nn
    from torch.utils.data import Dataset


@dataclass
class EvalContext:
    """What a family's periodic evaluation may use, from the trainer."""

    cfg: Config
    model: nn.Module
    """The averaged (EMA) model when kept, else the trained one; restore its mode when done."""
    task: Any
    val_batch: dict
    """The validation items, collated, on `device`."""
    train_dataset: Dataset
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    """The run's autocast context."""
    samples: Path
    """Where grids, clips and figures go (`run_dir/samples`)."""
    step: int


@dataclass
class EncodeRequest:
    """`aetk encode`'s options (flags of the same names)."""

    data: str
    out: str
    resolution: int = 256
    batch_size: int = 8
    shard_size: int = 1024
    sample: bool = False
    flip: bool = False
    dtype: str = "float16"
    seed: int = 0
    precision: str = "bf16"
    num_workers: int | None = None
    tile: int | None = None
    split: str = "train"
    segment_seconds: float = 5.0
    kbps: float | None = None
    frames: int = 17
    """Videos: frames per clip."""
    frame_stride: int = 1
    builtin_size: int = 512
    """Items a built-in source makes."""
    builtin_digits: int = BUILTIN_DIGITS
    """Videos: digits per clip of builtin:moving-mnist / builtin:moving-digits."""
    processes: Any = None
    """accelerate's `PartialState` under a launcher (None: one process)."""


@dataclass
class ReportRequest:
    """`aetk eval`'s options (flags of the same names)."""

    name: str
    """The model's path, as the report names it."""
    data: str | None = None
    resolution: int = 256
    n: int | None = None
    fit_n: int = 256
    fit_data: str | None = None
    """Where the PCA baseline is fitted (its train split); None: other items of `data`."""
    baselines: tuple[str, ...] = ()
    latent_bits: int = 16
    lpips_weights: str | None = None
    inception_weights: str | None = None
    precision_audit: bool = False
    precision: str = "no"
    """Compute precision of the reconstructions: no (fp32), bf16, fp16 or auto (image tokenizers)."""
    tile: int | None = None
    out_dir: str = "eval-out"
    kbps: tuple[float, ...] = ()
    segment_seconds: float = 5.0
    opus: bool = True
    frames: int = 17
    """Videos: frames per evaluated clip."""
    frame_stride: int = 1
    builtin_digits: int = BUILTIN_DIGITS
    """Videos: digits per clip of builtin:moving-mnist / builtin:moving-digits."""
    protocol: dict | None = None
    """A protocol card to follow (`aetk eval --protocol`): the data and metric weights must match it."""


IMAGE_REPORT_READS = frozenset({"name", "data", "resolution", "n", "fit_n", "fit_data", "baselines", "latent_bits",
                                "lpips_weights", "inception_weights", "precision_audit", "precision", "tile",
                                "out_dir", "protocol"})
"""The `ReportRequest` options `train.parts.image_report` (both image tokenizers' `aetk eval`) reads."""


@dataclass
class ExportRequest:
    """`aetk export`'s options."""

    out: str
    data: str | None = None
    resolution: int = 256
    n: int = 256
    scaling_factor: float | None = None


@dataclass
class SampleRequest:
    """`aetk sample`'s options (flags of the same names)."""

    out: str
    n: int = 16
    seed: int = 0
    steps: int = 50
    sampler: str = "ddim"
    guidance: float = 3.0
    label: str | None = None
    first_stage: str | None = None
    """The model that decodes the samples (`--vae`; default: the one recorded in the prior)."""
    tile: int | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None


def _no_check(cfg: Config) -> None:
    pass


@dataclass(frozen=True)
class Family:
    """One row of the family table."""

    kind: str
    summary: str
    """One line for `aetk train --help` and the docs."""
    model: type
    """The recipe's `model` section (a dataclass with `kind`)."""
    data: type
    """The recipe's `data` section."""
    loss: type | None
    """The recipe's `loss` section; None: the family has none (its losses are fixed by the model)."""
    build_model: Callable[[Config], nn.Module]
    """A fresh model of the recipe's architecture (or the one `model.init_from` names)."""
    build_task: Callable[[Config, nn.Module], Any]
    """The training task (`train.tasks.Task`) around the model."""
    datasets: Callable[[Config], tuple[Dataset, Dataset]]
    """(training, validation) datasets of the recipe's data."""
    evaluator: Callable[[], Callable[[EvalContext], dict[str, float]]]
    """Makes the run's periodic evaluation (called once per run, so it may keep what it loads):
    `eval/...` scalars, grids or clips under `ctx.samples`. Runs under `torch.no_grad()`."""
    export: Callable[[Config, nn.Module, Dataset, Path], None]
    """The final model into `model/` in the ecosystem's format (given the averaged model and the
    training data, e.g. to measure the latent scaling factor)."""
    saved_names: tuple[str, ...] = ()
    """The `saved_name` of the model classes this family trains: which family a loaded model
    (`aetk.load`) belongs to."""
    check: Callable[[Config], None] = _no_check
    """Checks across sections, after each section checked itself."""
    encode: Callable[[nn.Module, EncodeRequest], dict] | None = None
    """`aetk encode`: the model over a dataset -> shards; returns the manifest."""
    report: Callable[[nn.Module, ReportRequest], dict] | None = None
    """`aetk eval`: the model's quality report."""
    exports: dict[str, Callable[[nn.Module, ExportRequest], str]] = field(default_factory=dict)
    """`aetk export --format F`: F -> writer; returns what was written."""
    sample: Callable[[nn.Module, SampleRequest], str] | None = None
    """`aetk sample`: samples -> files; returns what was written."""
    reads: dict[str, frozenset[str]] = field(default_factory=dict)
    """Per verb ("encode", "eval", "export", "sample"): the options of its request that this family's
    hooks read. The verb refuses any other option a user set (`unread_options`): a flag that does
    nothing for this kind of model is a mistake to name, not to ignore."""


def unread_options(req: Any, reads: frozenset[str] | set[str]) -> list[str]:
    """The options of `req` (a request dataclass above) that differ from their defaults and are not
    in `reads`, in declaration order."""
    return [f.name for f in fields(req) if f.name not in reads and f.default is not MISSING
            and getattr(req, f.name) != f.default]
