"""`aetk bench classic`: train every recipe in configs/classic with `aetk train`'s code path, evaluate
each with `aetk eval`'s (eval/classic.py), and write one markdown table (a row per recipe) and one
figure (reconstructions, prior samples and latent interpolations, a strip each).

The models are tiny, so they run on one thread: on a shared 2-core machine two threads spend most
of each millisecond-long step waiting for each other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from eval.classic import TABLE_HEADER, evaluate_classic, save_rows_figure, table_row
from tokenizers_ae.classic.registry import load_classic
from train.recipe import load_config
from train.run import train


def bench_classic(*, recipes: str | Path = "configs/classic", out: str | Path = "runs/bench-classic",
                  steps: int | None = None, only: list[str] | None = None, threads: int | None = 1) -> dict:
    """Train and evaluate each recipe (optionally only those named in `only`, for `steps` steps each
    instead of the recipe's); returns {"rows": {recipe: metrics}, "table": markdown, "files": ...}."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    paths = sorted(Path(recipes).glob("*.yaml"))
    if only:
        unknown = sorted(set(only) - {p.stem for p in paths})
        if unknown:
            raise ValueError(f"no recipe {unknown[0]!r} in {recipes} (have {', '.join(p.stem for p in paths)})")
        paths = [p for p in paths if p.stem in only]
    rows, figures, lines = {}, [], []
    for path in paths:
        budget = [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"] \
            if steps else []
        cfg = load_config(path, [f"output_dir={out / path.stem}", "resume=never", "train.progress=false", *budget])
        if cfg.model.variant == "stacked" and steps:  # keep greedy stages inside the shorter budget
            cfg.model.pretrain_steps = max(1, min(cfg.model.pretrain_steps, steps // 4))
        start = time.perf_counter()
        trainer = train(cfg)
        trainer.close()
        seconds = time.perf_counter() - start
        model = load_classic(out / path.stem)  # exactly what `aetk eval RUN` evaluates
        result = evaluate_classic(model)
        m = {**result["metrics"], "steps": cfg.train.max_steps, "train_seconds": round(seconds, 1)}
        rows[path.stem] = m
        lines.append(table_row(path.stem, m, train=f"{m['steps']} steps, {seconds:.0f} s"))
        if result["rows"]:
            figures.append((path.stem, result["rows"]))
    table = _header_with_training() + "\n" + "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    files = {"table": str(out / "table.md"), "results": str(out / "results.json")}
    if figures:
        files["figure"] = str(save_rows_figure(figures, out / "figure.png"))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "table": table, "files": files, "threads": torch.get_num_threads()}


def _header_with_training() -> str:
    head, rule = TABLE_HEADER.split("\n")
    return head + " training |\n" + rule + " --- |"
