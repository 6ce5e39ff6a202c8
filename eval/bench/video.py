"""`aetk bench video`: encode and decode of a clip with aetk's `VideoVAE` against diffusers' own
`AutoencoderKLWan.encode/decode`, on the same (random, seeded) weights of a Wan-2.1-shaped video VAE.

Methods, per op (encode: `encode(x).latent_dist.mode()`, decode: `decode(z).sample`):
- `diffusers-untiled`: diffusers' own loop without tiling, the exact reference;
- `diffusers-tiled`: the same with `enable_tiling()` and `enable_slicing()` (default tile sizes unless
  `tile` is given). diffusers tiles only frames larger than its minimum tile (256 px by default: a
  256x256 clip is not tiled, so its output equals the reference), and its tiles are blended at the seams,
  so where tiling engages the output differs from the reference;
- `aetk`: `VideoVAE.encode(x)` / `VideoVAE.decode(z, clamp=True)`, which under no_grad stream the clip
  through the network depth first, a frame at a time at each resolution (see
  `tokenizers_ae/models/video_vae.py`).

Every measurement runs in a fresh process (`eval.bench.tiling.in_fresh_process`): the peak is the
growth of the resident set during the call alone (`peak_growth_mib`) with glibc's mmap threshold at
64 KiB, so a freed tensor goes back to the OS and the peak follows live memory. That threshold turns
every allocation above 64 KiB into fresh pages, which slows code that allocates more often than it
would under glibc's default (dynamic) threshold, so `seconds` is taken by default from a second fresh
process under glibc's defaults, as the code normally runs; `seconds_mmap64k` is the time of the memory run.
"""

from __future__ import annotations

import torch

from eval.bench.tiling import in_fresh_process, peak_growth_mib

WAN21 = dict(base_dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temporal_downsample=(False, True, True))
"""Wan 2.1's video VAE (diffusers' AutoencoderKLWan defaults): 4x in time, 8x in space, 16 channels."""

METHODS = ("diffusers-untiled", "diffusers-tiled", "aetk")
REFERENCE = "diffusers-untiled"
EQUAL_ATOL = 1e-5


def _build(arch: dict, frames: int, size: int, batch: int):
    from tokenizers_ae.models.video_vae import VideoVAE, build_autoencoder_kl_wan  # in the child, before measuring

    torch.manual_seed(0)
    model = VideoVAE(build_autoencoder_kl_wan(**arch)).eval()
    f = model.spatial_factor
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1
    z = torch.randn(batch, model.latent_channels, model.latent_frames(frames), size // f, size // f, generator=g)
    return model, x, z


def _tiling(vae, tile: int | None) -> None:
    vae.enable_tiling(*((tile, tile, tile * 3 // 4, tile * 3 // 4) if tile else ()))
    vae.enable_slicing()


def _run(arch: dict, frames: int, size: int, batch: int, op: str, method: str, tile: int | None, threads: int):
    """One measurement: (output, seconds, peak MiB)."""
    torch.set_num_threads(threads)
    model, x, z = _build(arch, frames, size, batch)
    vae = model.vae
    if method == "diffusers-tiled":
        _tiling(vae, tile)
    calls = {
        ("encode", "aetk"): lambda: model.encode(x),
        ("decode", "aetk"): lambda: model.decode(z, clamp=True),
        ("encode", "diffusers"): lambda: vae.encode(x).latent_dist.mode(),
        ("decode", "diffusers"): lambda: vae.decode(z).sample,
    }
    with torch.no_grad():
        return peak_growth_mib(calls[(op, "aetk" if method == "aetk" else "diffusers")])


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None  # (a tiny in-process run can show no resident-set growth)


def tiling_engaged(size: int, tile: int | None) -> bool:
    """Whether diffusers' Wan VAE tiles a size x size frame: only frames larger than its minimum tile."""
    return size > (tile or 256)


def bench_video(*, frames: int = 33, size: int = 256, batch: int = 1, arch: dict | None = None,
                ops=("encode", "decode"), methods=METHODS, tile: int | None = None, threads: int = 2,
                timing_run: bool = True, fresh: bool = True, progress: bool = True) -> dict:
    """Seconds, peak MiB and max abs error against diffusers' untiled output, per op x method.

    `tile`: diffusers' tile side (None: its defaults, 256 with stride 192); `timing_run`: time each call
    in a second fresh process under glibc's default allocator (else the memory run's time); `fresh`:
    False runs every call in this process (for tests: the peaks then depend on what ran before).
    """
    arch = dict(arch or WAN21)
    methods = tuple(methods)
    if REFERENCE not in methods:
        raise ValueError(f"methods must include the reference {REFERENCE!r}, got {methods}")
    methods = (REFERENCE,) + tuple(m for m in methods if m != REFERENCE)
    rows = []
    for op in ops:
        ref = None
        for method in methods:
            args = (arch, frames, size, batch, op, method, tile, threads)
            out, seconds_mem, peak = in_fresh_process(_run, *args) if fresh else _run(*args)
            seconds = in_fresh_process(_run, *args, mmap_threshold=None)[1] if fresh and timing_run else seconds_mem
            if method == REFERENCE:
                ref = out
            err = None if method == REFERENCE else float((out.float() - ref.float()).abs().max())
            row = {"op": op, "method": method, "seconds": round(seconds, 2), "seconds_mmap64k": round(seconds_mem, 2),
                   "peak_mib": round(peak, 1), "max_abs_err": err, "shape": list(out.shape)}
            rows.append(row)
            if progress:
                print(row, flush=True)
    by = {(r["op"], r["method"]): r for r in rows}
    ratios, equal = {}, {}
    for op in ops:
        if (op, "aetk") in by:
            equal[op] = by[(op, "aetk")]["max_abs_err"] <= EQUAL_ATOL
        if (op, "aetk") in by and (op, "diffusers-tiled") in by:
            a, d = by[(op, "aetk")], by[(op, "diffusers-tiled")]
            ratios[op] = {"time": _ratio(a["seconds"], d["seconds"]), "memory": _ratio(a["peak_mib"], d["peak_mib"])}
    target = {op: bool(equal.get(op) and r["time"] is not None and r["time"] <= 1.0
                       and r["memory"] is not None and r["memory"] < 1.0) for op, r in ratios.items()}
    return {"arch": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
            "frames": frames, "size": size, "batch": batch, "threads": threads,
            "diffusers_tiling": {"tile_sample_min": tile or 256, "tile_sample_stride": tile * 3 // 4 if tile else 192,
                                 "engaged": tiling_engaged(size, tile), "slicing": True},
            "seconds_from": ("a second fresh process, glibc default malloc" if fresh and timing_run
                             else "the memory run (mmap threshold 64 KiB)" if fresh else "this process"),
            "rows": rows, "aetk_vs_diffusers_tiled": ratios,
            f"aetk_equal_to_untiled_within_{EQUAL_ATOL:g}": equal,
            "target_met": target}
