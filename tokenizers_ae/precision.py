"""Reduced precision that repairs itself: run a model under fp16/bf16 autocast, keeping in fp32 only
the modules that overflow.

Stable Diffusion-style VAE decoders overflow fp16 in a few layers (NaN or black images); diffusers'
answer is `force_upcast`, the whole VAE in fp32. `AutoPrecision` instead runs a batch in reduced
precision and, when the output is not finite, finds the first module whose output was not, moves it
to fp32 (its inputs cast up, autocast off inside it) and runs again. A module already in fp32 that
still gives a non-finite output means the overflow is in code between modules (a residual add), so
its parent goes to fp32 instead; at worst the whole model does, which is `force_upcast`. The plan
(module names) grows across batches, is reported, and export records it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _up(a):
    return a.float() if torch.is_tensor(a) and a.is_floating_point() else a


def _fp32_forward(forward, device_type: str, *args, **kwargs):
    with torch.autocast(device_type, enabled=False):
        return forward(*(_up(a) for a in args), **{k: _up(v) for k, v in kwargs.items()})


def device_type(model: nn.Module) -> str:
    """The device type autocast needs for `model` ("cpu" for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device.type if p is not None else "cpu"


def _finite(y) -> bool:
    if torch.is_tensor(y):
        return bool(torch.isfinite(y).all()) if y.is_floating_point() else True
    if isinstance(y, (tuple, list)):
        return all(_finite(v) for v in y)
    if isinstance(y, dict):
        return all(_finite(v) for v in y.values())
    if dataclasses.is_dataclass(y):  # diffusers outputs, aetk's QuantizerOutput
        return all(_finite(getattr(y, f.name)) for f in dataclasses.fields(y))
    return True


def first_nonfinite(modules: dict[str, nn.Module], fn: Callable, args) -> str | None:
    """Run fn(*args) once (in whatever precision context is active) with hooks on `modules` (name ->
    module): the first one, in the order they return (a leaf before its container), whose floating
    output is not finite."""
    order: list[str] = []
    hooks = []
    for name, m in modules.items():
        def hook(mod, inp, out, name=name):
            if not order and not _finite(out):
                order.append(name)
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            fn(*args)
    finally:
        for h in hooks:
            h.remove()
    return order[0] if order else None


class AutoPrecision:
    """`plan(fn, *args)` = fn(*args) under autocast(dtype), with the modules of `model` named in
    `fp32_modules` run in fp32; repaired and re-run when the output is not finite.

    `fp32_modules` are names from `model.named_modules()` ("" is the whole model). `repairs` counts
    the re-runs so far. The output is never returned non-finite unless the fp32 model's is too.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | str = "fp16", fp32_modules: Iterable[str] = (),
                 *, max_repairs: int = 64) -> None:
        self.model = model
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.modules = dict(model.named_modules())
        unknown = [n for n in fp32_modules if n not in self.modules]
        if unknown:
            raise ValueError(f"fp32 modules not in the model: {unknown} (a plan recorded for another architecture?)")
        self.fp32_modules: list[str] = list(dict.fromkeys(fp32_modules))
        self.max_repairs = max_repairs
        self.repairs = 0

    @contextmanager
    def active(self):
        """Autocast to `dtype` with the planned modules patched to run in fp32."""
        dev = device_type(self.model)
        patched = []
        # An ancestor in fp32 covers its children: patch only the outermost planned modules.
        names = [n for n in self.fp32_modules if not any(n != a and (a == "" or n.startswith(a + "."))
                                                         for a in self.fp32_modules)]
        try:
            for n in names:
                m = self.modules[n]
                m.forward = functools.partial(_fp32_forward, m.forward, dev)
                patched.append(m)
            with torch.autocast(dev, dtype=self.dtype):
                yield
        finally:
            for m in patched:
                del m.forward  # the instance attribute; the class's forward shows again

    def _first_nonfinite(self, fn: Callable, args) -> str | None:
        with self.active():
            return first_nonfinite(self.modules, fn, args)

    def _escalate(self, name: str) -> str:
        """The module to move to fp32 for a non-finite output first seen at `name`."""
        covered = any(name == a or a == "" or name.startswith(a + ".") for a in self.fp32_modules)
        if not covered:
            return name
        # Already fp32 and still not finite: the overflow is between modules inside its parent.
        while True:
            parent = name.rpartition(".")[0] if "." in name else ""
            if parent not in self.fp32_modules:
                return parent
            if parent == "":
                return ""
            name = parent

    def __call__(self, fn: Callable, *args):
        for _ in range(self.max_repairs + 1):
            with self.active():
                y = fn(*args)
            if _finite(y) or "" in self.fp32_modules:
                return y
            bad = self._first_nonfinite(fn, args)
            new = self._escalate(bad) if bad is not None else ""
            self.fp32_modules.append(new)
            self.repairs += 1
        self.fp32_modules.append("")  # the bound was reached: the whole model in fp32
        with self.active():
            return fn(*args)

    def describe(self) -> dict:
        """The plan as JSON: dtype, the modules kept in fp32, and their share of the parameters."""
        total = sum(p.numel() for p in self.model.parameters()) or 1
        kept = set()
        for n in self.fp32_modules:
            kept.update(id(p) for p in self.modules[n].parameters())
        kept_n = sum(p.numel() for p in self.model.parameters() if id(p) in kept)
        return {"dtype": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, str(self.dtype)),
                "fp32_modules": list(self.fp32_modules), "fp32_parameter_fraction": kept_n / total,
                "repairs": self.repairs}


PLAN_KEY = "_aetk_precision_plan"
"""Where an export records its plan in a diffusers config.json: {"fp16": {"encode": [...], "decode":
[...]}}, module names of the diffusers model. diffusers ignores `_`-prefixed keys when it builds the
model, and keeps them in `model.config`."""

PRECISIONS = ("no", "bf16", "fp16", "auto", "auto-fp16", "auto-bf16")


def cpuinfo() -> str | None:
    """The text of /proc/cpuinfo; None where it cannot be read (not Linux). The one place the project reads it."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16); without, oneDNN emulates it and
    bf16 autocast is slower than fp32. True where the CPU flags cannot be read."""
    text = cpuinfo()
    return text is None or any(f in text for f in ("amx_bf16", "avx512_bf16"))


def training_precision(requested: str, *, cuda: bool | None = None) -> str:
    """What `train.mixed_precision` runs as: `auto` is bf16 where the hardware computes it natively (a
    GPU with bf16, a CPU with AMX or AVX512-BF16) and fp32 ("no") elsewhere; other values are kept.
    Emulated bf16 trained 4x slower than fp32 on an AVX-512 Xeon without those flags, and encoded 6.5x
    slower on an AVX2 EPYC (benchmarks/encode-klf8-128-avx2.json), so a recipe must not ask for it blindly."""
    if requested != "auto":
        return requested
    cuda = torch.cuda.is_available() if cuda is None else cuda
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_fast_bf16()
    return "bf16" if native else "no"


def auto_dtype(precision: str, device_type: str) -> str:
    """The reduced dtype of an `auto` precision: fp16 on GPUs, bf16 elsewhere. fp16 convolutions on a
    CPU without native fp16 run hundreds of times slower than fp32 (measured: `aetk bench upcast`), and
    bf16 has fp32's range, so it rarely needs a repair at all."""
    if precision in ("auto-fp16", "auto-bf16"):
        return precision.removeprefix("auto-")
    return "fp16" if device_type == "cuda" else "bf16"


def recorded_plan(model: nn.Module, part: str, dtype: str = "fp16") -> list[str]:
    """The fp32 modules an export recorded for `part` ("encode" or "decode") of `model` (a diffusers
    model, or a wrapper holding one as `.vae`), else []."""
    config = getattr(getattr(model, "vae", model), "config", None)
    plan = (config.get(PLAN_KEY) if hasattr(config, "get") else None) or {}
    return list(plan.get(dtype, {}).get(part, []))


class Compute:
    """fn(*args) in a named compute precision, for `aetk encode` / `aetk eval`'s `--precision`:

    - `no` (or `fp32`): as is;
    - `bf16`, `fp16`: autocast to that dtype;
    - `auto-fp16`, `auto-bf16`: autocast with the overflowing modules of `target` in fp32
      (`AutoPrecision`, starting from `plan`, e.g. the one an export recorded), repaired as it goes;
    - `auto`: `auto-fp16` on a GPU, `auto-bf16` elsewhere (`auto_dtype`).

    A non-finite floating output is never returned: ValueError naming the precision, the first module
    whose output was not finite, and what to use instead.
    """

    def __init__(self, target: nn.Module, precision: str, *, plan: Iterable[str] | Callable[[str], list[str]] = (),
                 flag: str = "--precision"):
        if precision == "fp32":
            precision = "no"
        if precision not in PRECISIONS:
            raise ValueError(f"{flag} {precision}: one of {', '.join(PRECISIONS)}")
        self.target, self.precision, self.flag = target, precision, flag
        self.auto = None
        if precision.startswith("auto"):
            dtype = auto_dtype(precision, device_type(self.target))
            start = plan(dtype) if callable(plan) else plan  # a recorded plan is per dtype
            self.auto = AutoPrecision(target, dtype, start)

    def __call__(self, fn: Callable, *args):
        if self.auto is not None:
            y = self.auto(fn, *args)
        elif self.precision == "no":
            y = fn(*args)
        else:
            with torch.autocast(device_type(self.target), dtype=DTYPES[self.precision]):
                y = fn(*args)
        if not _finite(y):
            modules = dict(self.target.named_modules())
            if self.auto is not None:
                bad = self.auto._first_nonfinite(fn, args)
            elif self.precision == "no":
                bad = first_nonfinite(modules, fn, args)
            else:
                with torch.autocast(device_type(self.target), dtype=DTYPES[self.precision]):
                    bad = first_nonfinite(modules, fn, args)
            hint = ("the fp32 model itself gives non-finite values: its weights or the input are broken"
                    if self.precision == "no" or self.auto is not None else "--precision auto keeps such modules "
                    "in fp32, --precision no runs everything in fp32")
            raise ValueError(f"{self.flag} {self.precision}: the output is not finite (first at module "
                             f"{bad or '(between modules)'}); {hint}")
        return y

    def describe(self) -> dict:
        return ({"mode": self.precision, **self.auto.describe()} if self.auto is not None else
                {"mode": self.precision, "dtype": "fp32" if self.precision == "no" else self.precision})

