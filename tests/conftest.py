"""Shared fixtures; helpers live in tests/helpers.py (importable as `helpers`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (scripts/test.sh runs two workers on two cores) each worker and every process it
# starts gets one OpenMP thread: two torch processes with two threads each spin-wait on each other.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_overrides  # noqa: E402


@pytest.fixture
def tiny_config():
    """tiny_config(out_dir, "key=value", ...) -> Config"""
    from train.recipe import config_from_dict

    def make(out: Path, *extra: str):
        return config_from_dict({}, tiny_overrides(out, *extra))

    return make
