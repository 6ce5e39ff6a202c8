"""`aetk bench tiling`: VAE decode and encode of large images, untiled vs aetk's exact tiling
(`tokenizers_ae/tiling.py`) vs diffusers' `enable_tiling()`, with time, peak memory and the max
abs difference of each against untiled.

Every measurement runs in a fresh process with glibc's mmap threshold at 64 KiB, so a freed
tensor returns to the OS and the resident set follows live memory; the peak is the growth of the
resident set (VmHWM after resetting it through /proc/self/clear_refs) during the call alone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
from pathlib import Path

import torch

KL_F8 = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32)
"""The architecture of configs/kl-f8.yaml (Stable Diffusion's VAE)."""


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_growth_mib(fn):
    """(result, seconds, peak resident-set growth in MiB) of fn() (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _status_mib("VmRSS:")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, _status_mib("VmHWM:") - base


def _build(arch: dict, size: int):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl  # in the child process, measured from here

    torch.manual_seed(0)
    vae = build_autoencoder_kl(**arch, sample_size=size).eval()
    f = 2 ** (len(arch["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(1, arch["latent_channels"], size // f, size // f, generator=g)
    return vae, x, z, f


def _run(arch: dict, size: int, op: str, method: str, tile: int, threads: int):
    """One measurement: returns (output, seconds, peak MiB)."""
    from tokenizers_ae.tiling import decode_tiled, encode_tiled  # in the child process, measured from here

    torch.set_num_threads(threads)
    vae, x, z, f = _build(arch, size)
    if method == "diffusers":
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // f
    with torch.no_grad():
        zq = vae.post_quant_conv(z)  # the decoder's input; diffusers' decode applies post_quant_conv itself
        mean = lambda moments: vae.quant_conv(moments).chunk(2, dim=1)[0]  # noqa: E731 - the posterior mean
        calls = {
            ("decode", "untiled"): lambda: vae.decoder(zq),
            ("decode", "aetk"): lambda: decode_tiled(vae.decoder, zq, tile),
            ("decode", "diffusers"): lambda: vae.decode(z).sample,
            ("encode", "untiled"): lambda: mean(vae.encoder(x)),
            ("encode", "aetk"): lambda: mean(encode_tiled(vae.encoder, x, tile)),
            ("encode", "diffusers"): lambda: vae.encode(x).latent_dist.mean,
        }
        out, seconds, peak = peak_growth_mib(calls[(op, method)])
    return out, seconds, peak


def _child(run, args, path, queue) -> None:
    out, seconds, peak = run(*args)
    torch.save(out, path)
    queue.put((seconds, peak))


def in_fresh_process(run, *args, mmap_threshold: int | None = 65536):
    """(output, seconds, peak MiB) of `run(*args)` in a fresh spawned process; `run` is a module-level
    function returning (tensor output, seconds, peak MiB). `mmap_threshold`: glibc's for the child (64 KiB:
    the resident set follows live memory; None: glibc's default, how programs normally run)."""
    if mmap_threshold is None:
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    else:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)  # inherited by the spawned child
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.pt"
        p = ctx.Process(target=_child, args=(run, args, str(path), q))
        p.start()
        while True:
            try:
                seconds, peak = q.get(timeout=1)
                break
            except queue.Empty:
                if not p.is_alive():  # an exception or the OOM killer: fail instead of waiting forever
                    try:
                        seconds, peak = q.get(timeout=5)  # (unless it put its result just before exiting)
                        break
                    except queue.Empty:
                        raise RuntimeError(f"the measuring process died (exit code {p.exitcode})") from None
        p.join()
        out = torch.load(path, weights_only=True)
    return out, seconds, peak


def measure(arch: dict, size: int, op: str, method: str, tile: int = 256, threads: int = 2):
    """(output, seconds, peak MiB) of one op in a fresh process."""
    return in_fresh_process(_run, arch, size, op, method, tile, threads)


def bench_tiling(*, sizes=(512, 1024), tile: int = 256, ops=("decode", "encode"), arch: dict | None = None,
                 methods=("untiled", "aetk", "diffusers"), threads: int = 2, progress: bool = True) -> dict:
    """Time, peak memory and max abs error against untiled, per size x op x method."""
    arch = dict(arch or KL_F8)
    rows = []
    for size in sizes:
        for op in ops:
            ref = None
            for method in methods:
                out, seconds, peak = measure(arch, size, op, method, tile, threads)
                if method == "untiled":
                    ref = out
                row = {"size": size, "op": op, "method": method, "tile": None if method == "untiled" else tile,
                       "seconds": round(seconds, 2), "peak_mib": round(peak, 1),
                       "max_abs_err": None if ref is None else float((out.float() - ref.float()).abs().max())}
                rows.append(row)
                if progress:
                    print(row, flush=True)
    ratios = {}
    for size in sizes:
        for op in ops:
            by = {r["method"]: r for r in rows if r["size"] == size and r["op"] == op}
            if "untiled" in by and "aetk" in by:
                ratios[f"{op}@{size}"] = {
                    "memory_vs_untiled": round(by["aetk"]["peak_mib"] / by["untiled"]["peak_mib"], 3),
                                          "time_vs_untiled": round(by["aetk"]["seconds"] / by["untiled"]["seconds"], 3)}
    return {"arch": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}, "tile": tile,
            "threads": threads, "rows": rows, "aetk_ratios": ratios}
