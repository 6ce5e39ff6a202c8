"""The machine a benchmark ran on, in words: wall-clock figures from a 2-core AVX2 box and a 2-core AMX box differ
by 1.5x or more, so every benchmark JSON names the CPU and its widest vector unit."""

from __future__ import annotations

import platform

from tokenizers_ae.precision import cpuinfo

# Widest first: the widest unit decides how fast fp32 and bf16 convolutions run.
_VECTOR_UNITS = (("amx_bf16", "amx-bf16"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def describe_cpu(cpuinfo: str) -> str:
    """The first processor of a /proc/cpuinfo text as "<model name> (<widest vector unit>)"."""
    lines = cpuinfo.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    unit = next((label for flag, label in _VECTOR_UNITS if flag in flags), None)
    return f"{name} ({unit})" if unit else name


def cpu_name() -> str:
    """E.g. "AMD EPYC (avx2)" or "Intel(R) Xeon(R) Platinum 8480+ (amx-bf16)"; the platform's machine name
    ("x86_64", "arm64") where /proc/cpuinfo cannot be read."""
    text = cpuinfo()
    return describe_cpu(text) if text is not None else platform.processor() or platform.machine()
