"""The one training loop, on accelerate. It knows nothing about models: the recipe's family
(`train/families/`) gives the datasets, the task and the evaluation, and the task (train/tasks.py)
says which modules each optimizer trains and what each phase's loss is.

Set-up (`Trainer.__init__`), one optimizer step (`Trainer.step`) and the run (`Trainer.run`) are
separate so the benchmark times exactly the code path `aetk train` runs.

Exactness: the data order, the augmentations and the posterior noise are pure functions of
(seed, step), not of any RNG state or of the process count. A resumed run therefore continues
bit-for-bit, and N processes with batch B/N compute the same step as one process with batch B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch.optim.swa_utils import AveragedModel
from transformers.optimization import get_wsd_schedule

from tokenizers_ae.precision import cpu_has_fast_bf16, training_precision
from tokenizers_ae.pretrained import (
    check_finite,
    checkpoint_dirs,
    checkpoint_model_meta,
    checkpoint_problem,
    latest_checkpoint,
)
from train.checkpoint import CheckpointError, check_resumable, load_checkpoint, save_checkpoint
from train.config import Config, ConfigError, RunError, TrainConfig
from train.data.loader import build_loaders
from train.families import family
from train.families.base import EvalContext
from train.guard import GanGuard
from train.model_card import is_export, write_model_card
from train.recipe import config_yaml
from train.tasks import StepContext
from train.trainable import ema_of_trained, freeze, require_source, share_frozen

log = logging.getLogger("aetk.train")


class NonFiniteLossError(RunError):
    """Too many consecutive steps with a NaN or infinite loss."""


KINDS = {"normal": 0, "uniform": 1}


def _step_noise(seed: int, step: int, global_batch: int, start: int, stop: int, *, kind: str = "normal"):
    """Random draws for items [start, stop) of a step's global batch: the same however the batch is
    split into processes and micro-batches."""

    def draw(shape: torch.Size) -> torch.Tensor:
        # Ints only: Python salts str hashes per process, ints and tuples of ints hash the same everywhere.
        g = torch.Generator().manual_seed(hash((seed, step, KINDS[kind], 0x5EED)) & 0x7FFF_FFFF_FFFF)
        fn = torch.randn if kind == "normal" else torch.rand
        return fn((global_batch, *shape[1:]), generator=g)[start:stop]

    return draw


def _schedule(opt: torch.optim.Optimizer, t: TrainConfig, last_epoch: int = -1) -> torch.optim.lr_scheduler.LRScheduler:
    """`t.lr_schedule` over `t.max_steps` optimizer steps; `last_epoch` = steps already taken - 1."""
    if t.lr_schedule == "wsd":  # not in diffusers' list
        return get_wsd_schedule(opt, num_warmup_steps=t.warmup_steps, num_decay_steps=t.decay_steps,
                                num_training_steps=t.max_steps, decay_type="1-sqrt", last_epoch=last_epoch)
    # diffusers' "constant" ignores num_warmup_steps; a recipe's warm-up must not vanish silently.
    name = "constant_with_warmup" if t.lr_schedule == "constant" and t.warmup_steps else t.lr_schedule
    return get_scheduler(name, opt, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps,
                         last_epoch=last_epoch)


def lr_factor(t: TrainConfig, step: int) -> float:
    """The multiplier of `train.lr` that `t`'s schedule gives after `step` optimizer steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return _schedule(opt, t).lr_lambdas[0](step)


def check_schedule_continues(before: TrainConfig, after: TrainConfig, step: int) -> None:
    """ConfigError when resuming at `step` with another `max_steps` would make the learning rate jump:
    a cosine or linear schedule, or a wsd one whose decay has begun under either plan, is stretched
    or cut mid-run, which would silently re-warm or drop the rate. A constant rate, and wsd while the
    rate is on its plateau under both plans, may be lengthened (a long run extended across sessions)."""
    if before.max_steps == after.max_steps:
        return
    a, b = lr_factor(before, step), lr_factor(after, step)
    if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12):
        return
    raise ConfigError(
        f"train.max_steps {before.max_steps} -> {after.max_steps} would move the {after.lr_schedule} schedule's "
        f"learning rate at the resumed step {step} from {a * after.lr:.3g} to {b * after.lr:.3g}; resume with "
        f"train.max_steps={before.max_steps}, or start a new run from this one's weights (a new output_dir; "
        "model.init_from where the family has it). To lengthen a run later, train it with "
        "train.lr_schedule=wsd and lengthen it while its rate is on the plateau")


class Trainer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        t = cfg.train
        if t.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision=fp16 needs a GPU (accelerate would silently run fp32 "
                              "on CPU); use bf16, which CPUs with AVX-512/AMX run fast")
        if t.mixed_precision == "bf16" and not torch.cuda.is_available() and not cpu_has_fast_bf16():
            log.warning("this CPU has no native bf16 (AMX or AVX512-BF16), so bf16 autocast runs slower than "
                        "fp32 here (about 4x on a 2-core AVX-512 Xeon); train.mixed_precision=no or auto is faster")
        self.precision = training_precision(t.mixed_precision)  # "no" | "bf16" | "fp16"
        if t.mixed_precision == "auto":
            why = "native bf16" if self.precision == "bf16" else \
                f"no native bf16 on this {'GPU' if torch.cuda.is_available() else 'CPU'}"
            log.info("train.mixed_precision=auto runs %s here (%s)", self.precision.replace("no", "fp32"), why)
        self.accelerator = Accelerator(
            mixed_precision=self.precision,
            cpu=not torch.cuda.is_available(),
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
            step_scheduler_with_optimizer=False,  # we step schedulers once per optimizer step
        )
        try:
            self._build()
        except BaseException:
            AcceleratorState._reset_state(reset_partial_state=False)  # let a corrected config try again
            raise

    def _build(self) -> None:
        cfg, t, acc = self.cfg, self.cfg.train, self.accelerator
        world = acc.num_processes
        if t.batch_size % (world * t.grad_accum):
            raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by processes x "
                              f"train.grad_accum = {world} x {t.grad_accum}")
        self.micro_batch = t.batch_size // (world * t.grad_accum)  # per process
        set_seed(cfg.seed)  # same initial weights on every process

        self.family = family(cfg.kind)
        self.loaders = build_loaders(cfg, self.family.datasets(cfg), rank=acc.process_index, world=world,
                                     micro_batch=self.micro_batch)
        require_source(cfg.model, t.trainable)
        self.task = self.family.build_task(cfg, self.family.build_model(cfg)).to(acc.device)
        if note := freeze(self.task.model_to_average(), t.trainable):
            log.info(note)
        self.evaluator = self.family.evaluator()
        self.phases = self.task.phases()
        self.models, self.optimizers, self.schedulers = {}, {}, {}
        for ph in self.phases:
            params = [p for p in ph.module.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=ph.lr, betas=ph.betas, weight_decay=ph.weight_decay)
            prepared = acc.prepare(ph.module, opt, _schedule(opt, t))
            self.models[ph.name], self.optimizers[ph.name], self.schedulers[ph.name] = prepared
        self.ema = None
        if t.ema_decay:
            live = self.task.model_to_average()
            self.ema = AveragedModel(live, multi_avg_fn=ema_of_trained(t.ema_decay))
            if t.trainable != "all":
                share_frozen(self.ema.module, live)
            self.ema.requires_grad_(False)
        # Adversarial tasks get the onset guardrails (train/guard.py).
        self.guard = GanGuard(cfg.loss) if any(ph.name == "discriminator" for ph in self.phases) else None
        self.step_idx = 0
        self.nonfinite_in_row = 0
        self.last_nonfinite = ""
        self.bad_items: set[int] = set()
        self.data_iter = None

    # --- one optimizer step ---------------------------------------------------------------------

    def _context(self, step: int, micro: int) -> StepContext:
        acc, t = self.accelerator, self.cfg.train
        # Position in the step's global batch, in the data sampler's order: micro-batch, process, item.
        start = micro * (t.batch_size // t.grad_accum) + acc.process_index * self.micro_batch
        reduce = (lambda x: acc.reduce(x, "mean")) if acc.num_processes > 1 else (lambda x: x)
        span = (self.cfg.seed, step, t.batch_size, start, start + self.micro_batch)
        return StepContext(step=step, noise=_step_noise(*span), uniform=_step_noise(*span, kind="uniform"),
                           reduce_mean=reduce, unwrap=acc.unwrap_model)

    def step(self, micro_batches: list[dict]) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns logged scalars (all processes)."""
        acc, t, step = self.accelerator, self.cfg.train, self.step_idx
        active = [ph.name for ph in self.phases if self.task.active(ph.name, step)]
        sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(micro_batches):
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            last = micro == len(micro_batches) - 1
            ctx = self._context(step, micro)
            with contextlib.ExitStack() as stack:
                if not last:  # accumulate locally; all-reduce once on the last micro-batch
                    for name in active:
                        stack.enter_context(acc.no_sync(self.models[name]))
                with acc.autocast():
                    out = self.task.forward(self.models, batch, ctx)
                for name in active:
                    with acc.autocast():
                        loss, logs = self.task.loss(name, self.models, out, batch, ctx)
                    acc.backward(loss / len(micro_batches))
                    for k, v in logs.items():
                        key = f"{name}/{k}" if k == "loss" else k
                        sums[key] = sums.get(key, 0.0) + v.float() / len(micro_batches)
        # One collective and one host sync per step for every logged value.
        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys])
        values = acc.reduce(values, "mean") if acc.num_processes > 1 else values
        norms = {}
        if t.max_grad_norm:  # clipping is harmless on a step that is then skipped
            norms = {f"{n}/grad_norm": acc.clip_grad_norm_(self.models[n].parameters(), t.max_grad_norm)
                     for n in active}
        logs = dict(zip([*keys, *norms], torch.cat([values, torch.stack(
            [v.float().to(values.device) for v in norms.values()]) if norms else values[:0]]).tolist()))
        finite = all(math.isfinite(logs[k]) for k in keys if k.endswith("loss"))
        for name in active:
            if finite:
                self.optimizers[name].step()
            self.optimizers[name].zero_grad(set_to_none=True)
        if finite:
            for name in active:
                self.schedulers[name].step()
            if self.ema is not None:
                live = self.task.model_to_average()
                self.ema.update_parameters(live)
                # Buffers are state, not weights (an EMA-updated codebook, counters): take them as they are.
                with torch.no_grad():
                    for b_ema, b in zip(self.ema.module.buffers(), live.buffers()):
                        b_ema.copy_(b)
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_in_row += 1
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            batch0 = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in micro_batches[0].items()}
            self.last_nonfinite = self.task.diagnose_nonfinite(batch0, dtype)
            log.warning("step %d: non-finite loss (%s), first non-finite value in %s; step skipped (%d in a row)",
                        step, {k: logs[k] for k in keys if k.endswith("loss")}, self.last_nonfinite,
                        self.nonfinite_in_row)
        logs["skipped"] = 0.0 if finite else 1.0
        logs["lr"] = self.schedulers[self.phases[0].name].get_last_lr()[0]  # the first phase's
        if finite and self.guard is not None and self.guard.update(step, logs, self.task):
            logs["gan/guard_trip"] = 1.0
        self.step_idx += 1
        if self.nonfinite_in_row >= t.max_nonfinite:
            raise NonFiniteLossError(
                f"stopping: {self.nonfinite_in_row} consecutive steps had a non-finite loss (last at step "
                f"{step}; first non-finite value in {self.last_nonfinite}). Lower train.lr, use "
                "train.mixed_precision=bf16 instead of fp16, or check the data.")
        return logs

    # --- data -----------------------------------------------------------------------------------

    def next_micro_batches(self) -> list[dict]:
        if self.data_iter is None:
            self.data_iter = iter(self.loaders.train(start_micro_batch=self.step_idx * self.cfg.train.grad_accum))
        batches = [next(self.data_iter) for _ in range(self.cfg.train.grad_accum)]
        for b in batches:
            self._note_bad(b.pop("bad", []))
        return batches

    def _note_bad(self, bad: list[int]) -> None:
        for i in bad:
            if i not in self.bad_items:
                self.bad_items.add(i)
                ds = self.loaders.train_dataset
                log.warning("skipping unreadable item %s (%s)", ds.describe(i), ds.why_unreadable(i))

    # --- state ----------------------------------------------------------------------------------

    def config_yaml(self) -> str:
        return config_yaml(self.cfg)

    def model_config(self) -> str:
        """`model_config.json`: the trained model's class and architecture, and where its raw weights
        sit in accelerate's file for the first phase (its key prefix there)."""
        model = self.task.model_to_average()
        owner = self.task.phases()[0].module
        prefix = next(name + "." for name, m in owner.named_modules() if m is model) if owner is not model else ""
        return checkpoint_model_meta(model.saved_name, model.pretrained_config(), raw_prefix=prefix,
                                     ema=self.ema is not None)

    def save(self) -> Path:
        extra = {f"ema.{k}": v for k, v in self.ema.state_dict().items()} if self.ema is not None else {}
        state = {"step": self.step_idx, "nonfinite_in_row": self.nonfinite_in_row,
                 "bad_items": sorted(self.bad_items), "task": self.task.state(),
                 "guard": self.guard.state() if self.guard is not None else None}
        return save_checkpoint(self.accelerator, self.run_dir / "checkpoints", self.step_idx, extra=extra,
                               state=state, config_yaml=self.config_yaml(), model_config=self.model_config(),
                               keep=self.cfg.train.keep_checkpoints)

    def maybe_resume(self) -> Path | None:
        """Continue from the newest intact checkpoint (`resume=auto`; damaged newer ones are skipped
        with a warning) or the one `resume` names; None when there is none to resume. CheckpointError
        when none is intact or the checkpoint cannot be trusted; ConfigError when the recipe differs
        from the checkpoint's in a key that may not change on resume (`check_resumable`), or when a new
        `train.max_steps` would make the learning rate jump at the resumed step (`check_schedule_continues`)."""
        r = self.cfg.resume
        if r == "never":
            return None
        if r == "auto":
            root = self.run_dir / "checkpoints"
            if not checkpoint_dirs(root):
                return None
            path = latest_checkpoint(root, hashes=True)
            if path is None:
                raise CheckpointError(f"no intact checkpoint in {root} (each one is damaged: see the warnings); "
                                      "use resume=never to start over, or a new output_dir")
            damaged = [p for step, p in checkpoint_dirs(root) if step > int(path.name.removeprefix("step-"))]
            self.accelerator.wait_for_everyone()  # every process has chosen before any is moved aside
            if self.accelerator.is_main_process:
                for p in damaged:  # kept for inspection, out of the rotation and of later resumes
                    p.rename(p.with_name(p.name + ".damaged"))
        else:
            path = Path(r)
            problem = checkpoint_problem(path) if path.is_dir() else f"resume={path}: no such checkpoint directory"
            if problem is not None:
                raise CheckpointError(f"refusing to load {path}: {problem}")
        before = check_resumable(self.cfg, path)
        if before is not None:  # None: an older aetk's recipe, not compared (check_resumable said so)
            step = json.loads((path / "trainer_state.json").read_text())["step"]
            check_schedule_continues(before.train, self.cfg.train, step)
        state, extra = load_checkpoint(self.accelerator, path, verified=True)
        self.step_idx = state["step"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.bad_items = set(state["bad_items"])
        self.task.load_state(state["task"])
        if self.guard is not None and state["guard"] is not None:
            self.guard.load_state(state["guard"])
        if self.ema is not None:
            self.ema.load_state_dict({k.removeprefix("ema."): v for k, v in extra.items()}, strict=True)
        self.data_iter = None
        return path

    def replan(self, max_steps: int) -> bool:
        """Give a wsd schedule a new `train.max_steps` while the rate is still on its plateau (warm-up or
        stable phase) under both plans, so the cool-down moves with no jump in the rate: `aetk bench quality`
        re-fits its budget as it measures the step time. False, with nothing changed, once either plan's
        cool-down has begun; ConfigError when `max_steps` cannot hold the warm-up and the cool-down."""
        t = self.cfg.train
        if t.lr_schedule != "wsd":
            raise ValueError(f"replan moves a wsd cool-down; train.lr_schedule={t.lr_schedule} would jump")
        new = dataclasses.replace(t, max_steps=max_steps)  # validates, as a recipe would be
        if self.step_idx >= min(t.max_steps - t.decay_steps, new.max_steps - new.decay_steps):
            return False
        for sched in self.schedulers.values():
            # The new LambdaLR resumes at step_idx from the optimizer's stored initial_lr.
            sched.scheduler = _schedule(sched.scheduler.optimizer, new, last_epoch=self.step_idx - 1)
        self.cfg = dataclasses.replace(self.cfg, train=new)
        return True

    def averaged_model(self) -> torch.nn.Module:
        """The EMA weights when kept, else the raw ones (bare module)."""
        return self.ema.module if self.ema is not None else self.task.model_to_average()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The family's periodic evaluation of the averaged model on the validation batch (main process)."""
        device = self.accelerator.device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.loaders.val_batch().items()}
        samples = self.run_dir / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        ctx = EvalContext(cfg=self.cfg, model=self.averaged_model(), task=self.task, val_batch=batch,
                          train_dataset=self.loaders.train_dataset, device=device, autocast=self.accelerator.autocast,
                          samples=samples, step=self.step_idx)
        return self.evaluator(ctx)

    def export(self, out: Path) -> None:
        """The averaged model into `out` in its family's format (`Family.export`). RunError, with
        nothing written, when its weights are not finite: a diverged run does not end as if it were good."""
        model = self.averaged_model()
        try:
            check_finite(model.state_dict(), f"the model after {self.step_idx} steps")
        except ValueError as e:
            raise NonFiniteLossError(f"{e}; lower train.lr, or use bf16 instead of fp16") from None
        self.family.export(self.cfg, model, self.loaders.train_dataset, out)
        if is_export(out):  # a directory export: the card the Hub renders beside it
            d = self.cfg.data
            data = getattr(d, "val_path", None) or getattr(d, "path", None)
            res = getattr(d, "resolution", None)
            command = (f"aetk eval {out} --data {data}" + (f" --resolution {res}" if res else "")
                       if data and self.family.report is not None else None)  # priors: no `aetk eval` report
            write_model_card(out, run_dir=self.run_dir, eval_command=command)

    def close(self) -> None:
        # Free models/optimizers before gloo tears down, or some multi-process runs abort at exit.
        self.accelerator.end_training()
        self.models = self.optimizers = self.schedulers = self.ema = self.task = self.phases = None
        self.evaluator = None
        self.accelerator.free_memory()
        gc.collect()
        # accelerate keeps process-wide singletons; reset them so another Trainer in this process
        # (tests, notebooks) may choose a different precision. The process group stays up.
        AcceleratorState._reset_state(reset_partial_state=False)
