"""`aetk bench upcast`: decoding with a VAE whose decoder overflows fp16, three ways.

- `fp32`: the whole VAE upcast, what diffusers does when `force_upcast` is set (the reference);
- `auto`: fp16 with only the overflowing modules in fp32 (`tokenizers_ae.precision.AutoPrecision`,
  the plan found once before timing, as an export records it);
- `fp16`: plain autocast, timed for scale only: its output is not finite.

The model is the kl-f8 architecture (Stable Diffusion's VAE) with random seeded weights and one
decoder convolution scaled past fp16's range, a GroupNorm after it bringing activations back: the
failure mode of released SD decoders in fp16, made reproducible without downloading them. Reports
seconds per decode (median of `repeats`), the relative error against fp32, finiteness, and the plan.
fp16 pays off where hardware runs it natively (GPU tensor cores); on a CPU without AMX-FP16 autocast
to fp16 is usually slower than fp32, and the figures say so.
"""

from __future__ import annotations

import statistics
import time

import torch

from eval.bench.tiling import KL_F8
from tokenizers_ae.models.kl_vae import build_autoencoder_kl
from tokenizers_ae.precision import AutoPrecision

OVERFLOWING = "decoder.up_blocks.1.resnets.0.conv1"
"""The convolution scaled to overflow fp16: mid-decoder, followed by a GroupNorm (as in SD's VAE)."""


def overflowing_vae(arch: dict = KL_F8, scale: float = 3e5, device: str = "cpu"):
    torch.manual_seed(0)
    vae = build_autoencoder_kl(**arch).eval().to(device)
    with torch.no_grad():
        vae.get_submodule(OVERFLOWING).weight.mul_(scale)
    return vae


def _time(fn, repeats: int) -> tuple[torch.Tensor, float]:
    out = fn()  # warm-up (and oneDNN's kernel choice)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


@torch.no_grad()
def bench_upcast(size: int = 256, batch: int = 1, repeats: int = 3, device: str | None = None,
                 threads: int | None = None, arch: dict = KL_F8) -> dict:
    """Decode a (batch, 4, size/f, size/f) latent three ways; see the module docstring. `arch`: the
    VAE's `build_autoencoder_kl` arguments (default kl-f8; at least two levels)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    vae = overflowing_vae(arch, device=device)
    f = 2 ** (len(arch["block_out_channels"]) - 1)
    z = torch.randn(batch, arch["latent_channels"], size // f, size // f,
                    generator=torch.Generator().manual_seed(1)).to(device)

    def decode(t):
        return vae.decode(t).sample

    ref, t32 = _time(lambda: decode(z).float(), repeats)
    plan = AutoPrecision(vae, "fp16")
    plan(decode, z)  # find the plan once, as export does
    auto, tauto = _time(lambda: plan(decode, z).float(), repeats)

    def plain():
        with torch.autocast(device.split(":")[0], dtype=torch.float16):
            return decode(z).float()

    f16, t16 = _time(plain, repeats)

    def err(y):
        return float((y - ref).norm() / ref.norm()) if torch.isfinite(y).all() else None

    params = sum(p.numel() for p in vae.parameters())
    return {
        "device": device, "threads": torch.get_num_threads(), "image": [batch, 3, size, size],
        "architecture": "kl-f8 (Stable Diffusion VAE)" if arch == KL_F8 else arch, "weights": "random, seeded",
        "vae_parameters": params,
        "overflowing_module": OVERFLOWING,
        "fp32_upcast": {"seconds": t32, "finite": bool(torch.isfinite(ref).all())},
        "auto": {"seconds": tauto, "finite": bool(torch.isfinite(auto).all()), "rel_error_vs_fp32": err(auto),
                 **plan.describe()},
        "fp16_plain": {"seconds": t16, "finite": bool(torch.isfinite(f16).all()), "rel_error_vs_fp32": err(f16)},
        "auto_speedup_vs_fp32_upcast": t32 / tauto,
    }
