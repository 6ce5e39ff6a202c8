"""Helpers for tests: tiny configs so every test trains in seconds on 2 CPU cores."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data.val_size=4", "train.batch_size=4", "train.max_steps=6", "train.lr=1e-3", "train.log_every=1",
    "train.eval_every=3", "train.checkpoint_every=3", "train.progress=false", "train.ema_decay=0.9",
    "train.curves=false",  # drawn by tests/eval/test_curves.py; 0.3 s per eval in every other test
]
TINY_IMAGES = ["data.path=builtin:skimage", "data.resolution=16", "data.builtin_size=64"]
"""Tiny image data (every family whose data section is images: all but soundstream and ar_prior)."""
TINY_IMAGE_TOKENIZER = [
    "model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.latent_channels=2",
    "model.mid_block_attention=false",
    "loss.perceptual_weight=0.1", "loss.perceptual_backbone=random", "loss.disc_channels=8",
    "loss.disc_layers=2", "loss.disc_start=3",
]
"""The tiny architecture and loss of the image tokenizers (model.kind kl_vae, the default, and vq_vae)."""
TINY_VIDEO = [
    "data.path=builtin:moving-digits", "data.resolution=16", "data.frames=5", "data.builtin_size=32",
    "model.base_dim=8", "model.latent_channels=4", "model.dim_mult=[1,2,2]", "model.temporal_downsample=[true,true]",
    "loss.perceptual_weight=0.1", "loss.perceptual_backbone=random", "loss.disc_channels=8",
    "loss.disc_layers=2", "loss.disc_start=3",
]
"""The tiny video VAE (model.kind video_vae): 4x in time, 4x in space, on moving digits."""


def tiny_overrides(out: Path, *extra: str) -> list[str]:
    kinds = [e.split("=", 1)[1] for e in extra if e.startswith("model.kind=")]
    kind = kinds[-1] if kinds else "kl_vae"
    images = TINY_IMAGES if kind not in ("soundstream", "ar_prior", "video_vae") else []
    tokenizer = TINY_IMAGE_TOKENIZER if kind in ("kl_vae", "vq_vae") else []
    video = TINY_VIDEO if kind == "video_vae" else []
    return [f"output_dir={out}", *TINY, *images, *tokenizer, *video, *extra]


def run_cli(args: list[str], *, env: dict | None = None, check: bool = True, timeout: int = 300,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `aetk` in a fresh process (needed for SIGKILL and multi-process tests)."""
    cmd = (launcher or [sys.executable, "-m", "aetk"]) + args
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def one_line(capsys, argv) -> tuple[int, str]:
    """`aetk ARGV` in-process (`aetk.cli.main`, as the console script calls it): (exit code, stderr)."""
    from aetk.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    return rc, err


def load_script(name: str, module: str | None = None) -> ModuleType:
    """scripts/NAME.py as a module (`module`: the name it is given, default NAME)."""
    spec = importlib.util.spec_from_file_location(module or name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script
