"""Benchmark JSON names the CPU and its widest vector unit: figures from an AVX2 box and an AMX box differ."""

from eval.bench.machine import describe_cpu

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f amx_bf16\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\n"


def test_the_widest_vector_unit_is_named_beside_the_model():
    assert describe_cpu(XEON) == "Intel(R) Xeon(R) Platinum 8480+ (amx-bf16)"
    assert describe_cpu(EPYC) == "AMD EPYC (avx2)"
    assert describe_cpu(XEON.replace(" amx_bf16", "")) == "Intel(R) Xeon(R) Platinum 8480+ (avx512)"
    assert describe_cpu("model name\t: Old\nflags\t: sse\n") == "Old"

