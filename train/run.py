"""`aetk train`: a Trainer driven to max_steps with logging, evaluation, checkpoints and export.

Run directory:
  config.yaml          resolved config (resume/reproduce from it)
  checkpoints/step-N/  full resumable state (atomic)
  model/               EMA weights in the family's format (`Family.export`): a diffusers AutoencoderKL /
                       VQModel / pipeline, transformers, or aetk's native format
  metrics.jsonl        one JSON object per log/eval event
  samples/             reconstruction grids (PNG)
  curves.png           learning curves from metrics.jsonl, redrawn after each evaluation
  logs/                TensorBoard
"""

from __future__ import annotations

import json
import logging
import time

from tqdm.auto import tqdm

from eval.curves import save_curves
from tokenizers_ae.files import fault_point
from train.config import Config
from train.loop import Trainer

log = logging.getLogger("aetk.train")


class MetricsLog:
    """Appends JSON lines to metrics.jsonl (main process) and mirrors scalars to the trackers."""

    def __init__(self, trainer: Trainer) -> None:
        self.acc = trainer.accelerator
        self.path = trainer.run_dir / "metrics.jsonl"

    def write(self, step: int, values: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


def train(cfg: Config) -> Trainer:
    """Run `cfg` to `train.max_steps` (resuming per `cfg.resume`); returns the trainer (close it).
    `config.yaml` is written once the run is known to start or resume with this recipe, so it is
    always what ran."""
    trainer = Trainer(cfg)
    acc = trainer.accelerator
    run_dir = trainer.run_dir
    t = cfg.train
    bar = None
    try:
        resumed = trainer.maybe_resume()
        if resumed is not None:
            log.info("resumed from %s at step %d", resumed, trainer.step_idx)
        if acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(trainer.config_yaml())
        acc.init_trackers("aetk")
        metrics = MetricsLog(trainer)
        bar = tqdm(total=t.max_steps, initial=trainer.step_idx, desc="train", unit="step",
                   disable=not (t.progress and acc.is_local_main_process), dynamic_ncols=True, mininterval=1.0)
        window_start, window_images = time.perf_counter(), 0
        while trainer.step_idx < t.max_steps:
            fault_point("kill_at_step", trainer.step_idx)
            batches = trainer.next_micro_batches()
            logs = trainer.step(batches)
            step = trainer.step_idx  # steps completed
            window_images += t.batch_size
            if step < t.max_steps:
                bar.update(1)
            else:  # close() draws the final line; update() would draw it too when a refresh is due (slow steps)
                bar.n = step
            if step % t.log_every == 0 or step == t.max_steps:
                dt = time.perf_counter() - window_start
                logs["images_per_s"] = window_images / max(dt, 1e-9)
                logs["bad_items"] = len(trainer.bad_items)
                metrics.write(step, logs)
                # Shown at the next refresh: refreshing here too printed the final line twice.
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.endswith("loss")}, refresh=False)
                window_start, window_images = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.max_steps:
                if acc.is_main_process:
                    metrics.write(step, trainer.evaluate())
                    if t.curves:
                        save_curves(metrics.path, run_dir / "curves.png", title=f"{run_dir.name} (step {step})")
                acc.wait_for_everyone()
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                trainer.save()
        bar.close()  # its final line before the export's log lines
        if acc.is_main_process:
            trainer.export(run_dir / "model")
            summary = {"steps": trainer.step_idx, "bad_items": len(trainer.bad_items),
                       # config.yaml keeps the recipe as written (`auto`); this is what it ran as here
                       "precision": {"asked": t.mixed_precision, "ran": trainer.precision},
                       "bad_paths": [trainer.loaders.train_dataset.describe(i) for i in sorted(trainer.bad_items)]}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        acc.wait_for_everyone()
    except BaseException:
        trainer.close()  # free accelerate's process-wide state, so the next run in this process can start
        raise
    finally:
        if bar is not None:
            bar.close()
    return trainer
