"""`aetk bench quantizer`: training-step speed and peak memory of aetk's `VectorQuantizer` (EMA)
against lucidrains' `vector_quantize_pytorch.VectorQuantize`, the common practice, on the same
random vectors, plus a check that aetk's indices are the exact nearest codes.

One step is forward + backward of `mean(quantized^2) + 0.25 * commitment` in training mode (EMA
update included) on (1, dim, n_vectors) channels-first for aetk and (1, n_vectors, dim) for the
reference, built with its defaults plus `decay=0.99, commitment_weight=0.25` (its defaults
include the rotation trick for the gradient).

Memory: each implementation runs in a fresh Python process, which records `ru_maxrss` (the
process's resident-set high-water mark, as the kernel counts it: every allocator, torch's
included, which `tracemalloc` does not see) after imports, model and input are built, and again
after the steps. The difference is the extra peak the steps needed (distance matrices, autograd
buffers); a fresh process per implementation keeps one's high-water mark from hiding the other's.
Run one benchmark at a time: on a shared 2-core machine a concurrent job distorts both sides.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from eval.bench.machine import cpu_name

REPO = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _exact_nearest(x, codes, block: int = 256):
    """Brute-force argmin ||x - e|| from explicit differences in float64: (N, d), (K, d) -> (N,)."""
    import torch  # in the child process, whose peak memory is measured

    x, codes = x.double(), codes.double()
    return torch.cat([torch.cdist(x[i : i + block], codes, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
                      for i in range(0, x.shape[0], block)])


def worker(*, impl: str, codebook_size: int, dim: int, n_vectors: int, steps: int, threads: int | None,
            seed: int = 0) -> dict:
    """Runs in a fresh process: time `steps` training steps (after one warm-up) and measure the
    extra peak RSS of all of them."""
    import torch  # in the child process, whose peak memory is measured

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if impl == "aetk":
        from tokenizers_ae.quantizers import VectorQuantizer  # in the child process, measured from here

        vq = VectorQuantizer(codebook_size=codebook_size, dim=dim, ema_decay=0.99, commitment_weight=0.25).train()
        z = torch.randn(1, dim, n_vectors, requires_grad=True)  # (1, D, N)

        def step():
            out = vq(z)
            (out.quantized.square().mean() + 0.25 * out.losses["vq/commitment"]).backward()
    else:
        try:
            from vector_quantize_pytorch import VectorQuantize  # optional: the reference, installed separately
        except ImportError:
            return {"status": "unavailable"}
        vq = VectorQuantize(dim=dim, codebook_size=codebook_size, decay=0.99, commitment_weight=0.25).train()
        z = torch.randn(1, n_vectors, dim, requires_grad=True)  # (1, N, D)

        def step():
            quantized, _, commit = vq(z)
            (quantized.square().mean() + commit.sum()).backward()

    base = _rss_mb()
    step()  # warm-up (first-call allocations count towards the peak, not the time)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t0) / steps
    result = {"status": "ok", "seconds_per_step": seconds, "vectors_per_s": n_vectors / seconds,
              "peak_rss_increase_mb": _rss_mb() - base, "rss_before_steps_mb": base}
    if impl == "aetk":
        with torch.no_grad():
            vq.eval()
            indices = vq(z).indices.flatten()
            expected = _exact_nearest(z[0].t(), vq.codebook)
        result["indices_exact"] = bool(torch.equal(indices, expected))
        result["indices_mismatches"] = int((indices != expected).sum())
    return result


def _run(**kwargs) -> dict:
    code = ("import json, sys; from eval.bench.quantizer import worker; "
            "print(json.dumps(worker(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {kwargs['impl']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_quantizer(*, codebook_size: int = 16384, dim: int = 8, n_vectors: int = 16384, steps: int = 5,
                    reference: bool = True, threads: int | None = None) -> dict:
    """Vectors/s and extra peak RSS (MB) of one training step, aetk vs vector-quantize-pytorch.

    Returns `aetk` and `reference` results (`{"status": "unavailable"}` when the package is not
    installed), `speedup_vs_reference` (throughput ratio) and `memory_fraction_of_reference`
    (peak-increase ratio), and `aetk.indices_exact` (indices equal a float64 brute-force search).
    `threads` sets torch's intra-op threads in both workers (None: torch's default); on a machine
    shared with other jobs, 1 thread avoids OpenMP barrier stalls that swamp the measurement.
    """
    import torch  # in the child process, whose peak memory is measured

    cfg = {"codebook_size": codebook_size, "dim": dim, "n_vectors": n_vectors, "steps": steps, "threads": threads}
    out: dict = {"config": cfg, "torch": torch.__version__, "threads": threads or torch.get_num_threads(),
                 "machine": cpu_name()}
    out["aetk"] = _run(impl="aetk", **cfg)
    if reference:
        ref = out["reference"] = _run(impl="reference", **cfg)
        if ref["status"] == "ok":
            out["speedup_vs_reference"] = out["aetk"]["vectors_per_s"] / ref["vectors_per_s"]
            out["memory_fraction_of_reference"] = (out["aetk"]["peak_rss_increase_mb"]
                                                   / max(ref["peak_rss_increase_mb"], 1e-9))
    return out
