"""Precision audit: does a model survive bf16 / fp16? Stable Diffusion-style VAE decoders are known
to overflow fp16 (NaN images); this finds where, before a user meets it in a pipeline."""

from __future__ import annotations

import torch
from torch import nn

from tokenizers_ae.precision import AutoPrecision

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


@torch.no_grad()
def _run(model: nn.Module, fn, x: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, list]:
    """Output of fn(model, x) under autocast(dtype) (None: fp32) and, per leaf module in execution
    order, (name, max |output|, all finite)."""
    record: list[tuple[str, float, bool]] = []
    hooks = []
    for name, m in _leaf_modules(model):
        def hook(mod, inp, out, name=name):
            if torch.is_tensor(out) and out.is_floating_point():
                o = out.detach().float()
                finite = bool(torch.isfinite(o).all())
                record.append((name, float(o[torch.isfinite(o)].abs().max()) if o.numel() and finite else float("inf"),
                               finite))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = fn(model, x).float()
    finally:
        for h in hooks:
            h.remove()
    return out, record


def precision_audit(model: nn.Module, x: torch.Tensor, fn=None) -> dict:
    """Run x (B, C, H, W) through `fn(model, x)` (default: model(x)) in fp32, bf16 and fp16.

    Returns per precision the output's relative error against fp32 and whether it is finite,
    the fp32 peak activation of every layer (sorted, top 10) against fp16's range, the layers
    whose fp32 activations exceed it, the first layer whose fp16 output is not finite, and
    `fp16_safe`.
    """
    fn = fn or (lambda m, t: m(t))
    model.eval()
    ref, peaks = _run(model, fn, x, None)
    out: dict = {"fp16_max": FP16_MAX, "precisions": {}}
    first_bad = None
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        y, record = _run(model, fn, x, dtype)
        finite = bool(torch.isfinite(y).all())
        err = float((y - ref).norm() / ref.norm()) if finite else float("inf")
        out["precisions"][name] = {"output_finite": finite, "rel_error_vs_fp32": err}
        if name == "fp16":
            first_bad = next((n for n, _, ok in record if not ok), None)
    top = sorted(peaks, key=lambda r: -r[1])[:10]
    over = [n for n, peak, _ in peaks if peak > FP16_MAX]
    out.update({
        "peak_activations_fp32": [{"layer": n, "max_abs": p, "fraction_of_fp16_max": p / FP16_MAX} for n, p, _ in top],
        "layers_over_fp16_range": over,
        "first_nonfinite_layer_fp16": first_bad,
        "fp16_safe": out["precisions"]["fp16"]["output_finite"] and not over,
    })
    return out


@torch.no_grad()
def first_nonfinite_module(model: nn.Module, fn, x: torch.Tensor, dtype: torch.dtype | None = None) -> str | None:
    """Name of the first leaf module (in execution order) whose output is not finite, else None."""
    _, record = _run(model, fn, x, dtype)
    return next((n for n, _, ok in record if not ok), None)


@torch.no_grad()
def fp16_plan(vae: nn.Module, x: torch.Tensor) -> dict:
    """The modules of a diffusers AutoencoderKL that must stay fp32 for fp16 to give finite encodes
    and decodes of x (B, C, H, W): {"fp16": {"encode": [...], "decode": [...]}} (empty lists for an
    fp16-safe model), as `tokenizers_ae.precision.PLAN_KEY` records it and `--precision auto` reads it."""
    vae.eval()
    enc = AutoPrecision(vae, "fp16")
    z = enc(lambda t: vae.encode(t).latent_dist.mean, x).float()
    dec = AutoPrecision(vae, "fp16")
    dec(lambda t: vae.decode(t).sample, z)
    return {"fp16": {"encode": enc.fp32_modules, "decode": dec.fp32_modules}}
