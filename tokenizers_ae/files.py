"""File writing every package shares: atomic replacement, and the fault points the kill tests use."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp)` on a temporary name beside `path`, then rename it into place: a failure or a
    kill never leaves a partial `path`, and an existing one stays until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fault_point(point: str, step: int) -> None:
    """Fault injection for the kill tests: AETK_FAULT=point:step SIGKILLs this process there."""
    if os.environ.get("AETK_FAULT", "") == f"{point}:{step}":
        os.kill(os.getpid(), 9)


def file_stat(path: str | Path) -> str:
    """"size:mtime_ns" of a file ("missing" when it is gone): a cheap fingerprint of its content."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"
