"""Learning curves of a run: its metrics.jsonl drawn as one small panel per quantity (`curves.png`).

metrics.jsonl holds one JSON object per log or eval event ({"step": N, "generator/loss": ..,
"eval/si_snr@6kbps": ..}). Panels, in order: the training losses (every key ending in "loss", outside
eval/), then one per evaluated metric. Rate-tagged metrics ("eval/si_snr@1.5kbps", "@6kbps") share one
panel with a line per rate, and the untagged copy the evaluator also writes (the highest rate's) is left
out. The trainer redraws the figure after every evaluation, so a long run shows where it stands.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from tokenizers_ae.files import atomic_write

MAX_PANELS = 12
"""More panels than this are unreadable at one figure's size; the first ones (losses, then eval keys in
the order the evaluator writes them) are kept."""

_RATE = re.compile(r"^(?P<name>.+)@(?P<rate>[0-9.]+)(?P<unit>[a-zA-Z]+)$")


def read_metrics(path: Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl, skipping lines that do not parse (a torn last line from a run
    killed mid-write): a figure is drawn from what is readable."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def curve_panels(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{panel title: {line label: [(step, value), ...]}} in drawing order (see the module docstring)."""
    losses: dict[str, list[tuple[int, float]]] = {}
    evals: dict[str, dict[str, list[tuple[int, float]]]] = {}
    tagged: set[str] = set()
    for row in rows:
        step = row.get("step")
        if not isinstance(step, int):
            continue
        for key, value in row.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                continue
            if key.startswith("eval/"):
                name = key[len("eval/"):]
                m = _RATE.match(name)
                if m:
                    tagged.add(m["name"])
                    evals.setdefault(m["name"], {}).setdefault(f"{m['rate']} {m['unit']}", []).append((step, value))
                else:
                    evals.setdefault(name, {}).setdefault("", []).append((step, value))
            elif key.endswith("loss"):
                losses.setdefault(key, []).append((step, value))
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if losses:
        panels["training losses"] = losses
    for name, lines in evals.items():
        if name in tagged:
            lines = {label: pts for label, pts in lines.items() if label}  # the untagged copy repeats a rate
        panels[f"eval: {name}"] = lines
    return dict(list(panels.items())[:MAX_PANELS])


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Running mean over the last n points (losses are noisy per logged step)."""
    if len(values) < 3 or n <= 1:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - n)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def save_curves(metrics_path: Path, out: Path, title: str = "") -> list[str]:
    """Draw `metrics_path` into the PNG `out` (written atomically); returns the panel titles drawn
    ([] and no file when there is nothing to draw yet)."""
    panels = curve_panels(read_metrics(metrics_path))
    if not panels:
        return []
    import matplotlib  # matplotlib: heavy (a second to import), only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, pts in lines.items():
            steps = np.array([s for s, _ in pts])
            values = np.array([v for _, v in pts], dtype=float)
            if name == "training losses":
                values = _smooth(values, 10)
            ax.plot(steps, values, marker="o" if len(pts) <= 30 else None, ms=3, label=label or None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if any(lines):  # labelled lines (rates, loss names); a lone unlabelled metric needs no legend
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return list(panels)
