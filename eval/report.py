"""`aetk eval` of an image tokenizer: reconstruction quality, rate, latent or token statistics and
throughput, beside JPEG at the same bitrate and patch PCA with the same number of latent values,
with a reconstruction grid and a rate-distortion plot. The rate is the family's: `latent_rate`
(KL-VAE latents at `latent_bits` each) or `token_rate` (log2(K) bits per token)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from eval import protocol as protocol_mod
from eval.baselines import PatchPCA, jpeg_quality_for_bpp, jpeg_roundtrip
from eval.image import (
    psnr,
    reconstruction_metrics,
    save_comparison_figure,
    save_reconstruction_grid,
    weight_free_unavailable,
)
from eval.latents import latent_statistics
from eval.precision import precision_audit
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.data.spread import spread_items
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.models.kl_vae import KLVAE
from tokenizers_ae.models.vq_vae import VQVAE
from tokenizers_ae.precision import Compute, recorded_plan

log = logging.getLogger("aetk.eval")
JPEG_CURVE = (5, 10, 20, 35, 50, 75, 90)


@torch.no_grad()
def reconstruct(model: KLVAE | VQVAE, x: torch.Tensor, batch: int = 16, tile: int | None = None,
                compute: Compute | None = None) -> tuple[torch.Tensor, float]:
    """Reconstructions of x (B, 3, H, W) (posterior means for a KL-VAE) and throughput in images/s;
    `tile`: encode and decode in exact tiles of that many pixels (bounded memory); `compute`: the
    precision they run in (`tokenizers_ae.precision.Compute`; default fp32)."""
    model.eval()
    outs = []
    start = time.perf_counter()
    for s in range(0, x.shape[0], batch):
        xs = x[s:s + batch]
        y = compute(lambda t: model.reconstruct(t, tile), xs) if compute else model.reconstruct(xs, tile)
        outs.append(y.float().clamp(-1, 1))
    return torch.cat(outs), x.shape[0] / (time.perf_counter() - start)


def compute_for(model: KLVAE | VQVAE, precision: str) -> Compute:
    """`aetk eval --precision`: the model's recorded fp16 plan (encoder and decoder) as the start."""
    target = getattr(model, "vae", model)
    return Compute(target, precision,
                   plan=lambda dt: recorded_plan(target, "encode", dt) + recorded_plan(target, "decode", dt))


@dataclass
class Rate:
    """What a tokenizer stores per image: `values` numbers of `bits` each, on an h x w grid of
    `channels` (for the PCA baseline), plus the family's statistics under `extra`."""

    values: int
    bits: float
    channels: int
    grid: tuple[int, int]
    extra: dict


def latent_rate(vae: KLVAE, x: torch.Tensor, latent_bits: int) -> Rate:
    """A KL-VAE's latents at `latent_bits` bits per value, with their statistics."""
    stats = latent_statistics(vae.vae, (x[s:s + 16] for s in range(0, x.shape[0], 16)))
    c, h, w = stats["latent_shape"]
    extra = {"latents": {k: stats[k] for k in ("latent_shape", "mean", "std", "global_std", "scaling_factor")},
             "config_scaling_factor": vae.scaling_factor}
    return Rate(values=c * h * w, bits=latent_bits, channels=c, grid=(h, w), extra=extra)


def token_rate(model: VQVAE, x: torch.Tensor, latent_bits: int) -> Rate:
    """A VQ tokenizer's tokens at log2(K) bits each (`latent_bits` does not apply), with codebook statistics."""
    cb = codebook_report(model, x)
    h, w = cb["token_shape"][-2:]
    c = int(getattr(model.quantizer, "dim", 1))
    return Rate(values=int(torch.tensor(cb["token_shape"]).prod()), bits=cb["bits_per_token"], channels=c,
                grid=(h, w), extra={"codebook": cb})


@torch.no_grad()
def codebook_report(model, x: torch.Tensor, batch: int = 16) -> dict:
    """Token statistics of a VQ tokenizer on x: usage, perplexity, dead codes, grid shape."""
    idx = torch.cat([model.encode(x[s:s + batch]).indices for s in range(0, x.shape[0], batch)])
    k = int(model.quantizer.codebook_size)
    counts = torch.bincount(idx[idx >= 0].flatten(), minlength=k).double()
    p = counts / counts.sum()
    return {"token_shape": list(idx.shape[1:]), "codebook_size": k,
            "codebook_usage": float((counts > 0).double().mean()),
            "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), "dead_codes": int((counts == 0).sum()),
            "bits_per_token": float(torch.log2(torch.tensor(float(k))))}


def _lpips_or_reason(weights: str | None):
    try:
        return LPIPS(backbone="vgg", weights_path=weights), None
    except FileNotFoundError as e:
        return None, f"unavailable: {str(e).split('. Either')[0]}"


def _rfid_or_reason(x: torch.Tensor, recon: torch.Tensor, weights: str | None):
    if not weights or not Path(weights).is_file():
        return "unavailable: no local Inception weights (pass --inception-weights PATH to torch-fidelity's " \
               "pt_inception-2015-12-05 file)"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance  # optional: needs torch-fidelity
    except ImportError as e:  # torchmetrics' FID needs torch-fidelity
        return f"unavailable: {e}"
    fid = FrechetInceptionDistance(feature_extractor_weights_path=weights, normalize=True)
    fid.update(((x + 1) / 2).clamp(0, 1), real=True)
    fid.update(((recon + 1) / 2).clamp(0, 1), real=False)
    return float(fid.compute())


def evaluate(model: KLVAE | VQVAE, x: torch.Tensor, *, rate: Callable[..., Rate],
             fit_x: torch.Tensor | None = None, baselines: tuple[str, ...] = (), latent_bits: int = 16,
             lpips_weights: str | None = None, inception_weights: str | None = None,
             out_dir: str | Path | None = None, tile: int | None = None, compute: str = "no") -> dict:
    """`model`: an image tokenizer; `rate`: `latent_rate` or `token_rate`. x: (N, 3, H, W) evaluation
    images in [-1, 1]; fit_x: images PCA is fitted on (with the tokenizer's stride and latent channels);
    `compute`: the precision of the reconstructions (`--precision`: no, bf16, fp16, auto)."""
    lp, lp_reason = _lpips_or_reason(lpips_weights)
    runner = compute_for(model, compute)
    recon, ips = reconstruct(model, x, tile=tile, compute=runner)
    metrics = reconstruction_metrics(x, recon, lpips=lp)
    if lp is None:
        metrics["lpips"] = lp_reason
    metrics["rfid"] = _rfid_or_reason(x, recon, inception_weights)
    metrics.update(weight_free_unavailable(min(x.shape[-2:])))
    pixels = x.shape[2] * x.shape[3]
    r = rate(model, x, latent_bits)
    values, latent_bits, c, (h, w), extra = r.values, r.bits, r.channels, r.grid, r.extra
    bpp = values * latent_bits / pixels
    result = {
        "images": x.shape[0], "resolution": list(x.shape[2:]),
        "model": {**metrics, "latent_values": values, "latent_bits": latent_bits, "bpp": bpp,
                  "throughput_images_per_s": ips},
        "precision": runner.describe(),
        **extra,
    }
    grids, curves = [recon], {}
    shown = {f"model, {metrics['psnr']:.1f} dB": recon}  # the comparison figure's columns
    if "jpeg" in baselines:
        q, jbpp = jpeg_quality_for_bpp(x, bpp)
        jrec, _ = jpeg_roundtrip(x, q)
        result["jpeg"] = {**reconstruction_metrics(x, jrec, lpips=lp), "quality": q, "bpp": jbpp}
        grids.append(jrec)
        shown[f"JPEG q{q}, {result['jpeg']['psnr']:.1f} dB"] = jrec
        curves["jpeg"] = [(b, psnr(x, r)) for r, b in
                          (jpeg_roundtrip(x, qq) for qq in JPEG_CURVE)]
    if "pca" in baselines:
        factor = x.shape[2] // h
        fit = fit_x if fit_x is not None else x
        pca = PatchPCA(factor=factor, channels=c).fit(fit)
        prec = pca.reconstruct(x)
        result["pca"] = {**reconstruction_metrics(x, prec, lpips=lp), "latent_values": values, "bpp": bpp,
                         "fitted_on": "fit images" if fit_x is not None else "the evaluation images",
                         "fit_items": int(fit.shape[0])}
        grids.append(prec)
        shown[f"patch PCA, {result['pca']['psnr']:.1f} dB"] = prec
        curves["pca"] = []
        for k in sorted({1, 2, c, 2 * c, 4 * c, 8 * c}):
            if k <= 3 * factor * factor:
                r = PatchPCA(factor=factor, channels=k).fit(fit).reconstruct(x)
                curves["pca"].append((k * h * w * latent_bits / (x.shape[2] * x.shape[3]),
                                      psnr(x, r)))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_reconstruction_grid(x[:8], *[g[:8] for g in grids], path=out / "reconstructions.png")
        _rd_plot(result, curves, out / "rate_distortion.png")
        # Large, spread over the set, each reconstruction beside its error map: what people look at.
        save_comparison_figure(x, shown, out / "comparison.png", n=4)
        result["files"] = {"grid": str(out / "reconstructions.png"), "rd_plot": str(out / "rate_distortion.png"),
                           "comparison": str(out / "comparison.png")}
    return result


def _rd_plot(result: dict, curves: dict, path: Path) -> None:
    import matplotlib  # matplotlib: heavy, only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{name} (sweep)")
    m = result["model"]
    ax.plot([m["bpp"]], [m["psnr"]], "r*", ms=12, label="tokenizer")
    ax.set_xlabel(f"bits per pixel (latents at {m['latent_bits']} bits)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("rate-distortion")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


PCA_FIT_RULE = "fit_n items evenly spaced over the source: items start + i * (len - start) // fit_n"
"""How `pca_fit_set` picks its items, as the protocol card states it."""


def pca_fit_set(load: Callable, data: str, n: int, fit_n: int, fit_data: str | None,
                protocol: dict | None) -> torch.Tensor | None:
    """The items a PCA baseline is fitted on: `fit_n` evenly spaced over `fit_data`'s train split, else
    over a built-in `data`'s train split, else over the items of `data` after the `n` evaluated.
    `load(split, start, count, source, flag, spread=True)` reads them. Warns when they are too few;
    checked against a followed card."""
    builtin = data.startswith("builtin:")
    fit = (load("train", 0, fit_n, fit_data, "--fit-data", spread=True) if fit_data else
           load("train", 0 if builtin else n, fit_n, data, "--data", spread=True))
    warn_small_fit(fit, fit_n, data, fit_data)
    protocol_mod.check_fit(protocol, fit)
    return fit


def warn_small_fit(fit: torch.Tensor | None, fit_n: int, data: str, fit_data: str | None) -> None:
    """A PCA baseline fitted on a handful of items is a straw man (or, on none, fitted on the evaluated
    items themselves, flattering it): say so, and how to give it its own data."""
    got = 0 if fit is None else fit.shape[0]
    if got < min(fit_n, 32):
        where = fit_data or f"{data} beyond the evaluated items"
        log.warning("the PCA baseline is fitted on %s: %s. Pass --fit-data (e.g. the training folder) for a fair "
                    "baseline", f"only {got} items of {where}" if got else "the evaluated items themselves",
                    "too few to be fair" if got else "optimistic")


def evaluate_on_data(model: KLVAE | VQVAE, data: str | None, *, rate: Callable[..., Rate], resolution: int = 256,
                     n: int = 64, fit_n: int = 256, precision: bool = False, protocol: dict | None = None,
                     fit_data: str | None = None, **kwargs) -> dict:
    """`aetk eval` of an image tokenizer: `evaluate` on the first `n` held-out images of `data` (the
    `val` split of a built-in source, else the first images), PCA fitted on other images of the same
    source; with `precision`, the fp32 / bf16 / fp16 audit on 8 of them. The result carries the
    protocol card (`eval.protocol`); with `protocol` (a card to follow), the data and metric weights
    must be the card's. ValueError naming the flag when the data gives no image."""
    if not data:
        raise ValueError("--data is required: the images to evaluate on")
    if resolution < 8:
        raise ValueError(f"--resolution {resolution}: must be at least 8 pixels")
    builtin = data.startswith("builtin:")

    def images(split: str, start: int, count: int, source: str = data, flag: str = "--data",
               spread: bool = False) -> torch.Tensor | None:
        try:
            ds = build_image_dataset(source, resolution=resolution, random_crop=False, random_flip=False, split=split)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{flag}: {e}") from None
        idx = spread_items(start, len(ds), count) if spread else range(start, min(start + count, len(ds)))
        return torch.stack([ds[i]["x"] for i in idx]) if len(idx) else None

    # Hashed once (a VGG16 file is half a gigabyte): checked against the card, then written into it.
    weights = protocol_mod.weight_hashes({"lpips_weights": kwargs.get("lpips_weights"),
                                         "inception_weights": kwargs.get("inception_weights")})
    protocol_mod.check_weights(protocol, weights)
    split = "val" if builtin else "train"
    x = images(split, 0, n)
    if x is None:
        raise ValueError(f"--data {data}: no images to evaluate")
    protocol_mod.check_data(protocol, x, data)
    fit = pca_fit_set(images, data, n, fit_n, fit_data, protocol) if "pca" in kwargs.get("baselines", ()) else None
    result = evaluate(model, x, rate=rate, fit_x=fit, **kwargs)
    settings = {"resolution": resolution, "crop": "centre, shorter side resized to it", "n": n, "fit_n": fit_n,
                "baselines": list(kwargs.get("baselines", ())), "latent_bits": kwargs.get("latent_bits", 16),
                "tile": kwargs.get("tile"), "precision": kwargs.get("compute", "no"),
                "fit_data": fit_data, "fit_sha256": protocol_mod.content_sha256(fit) if fit is not None else None,
                "pca_fit": (f"{fit_data} (train split), " if fit_data else
                            f"{data} (train split) from item {0 if builtin else n} (other images of the source), ")
                + PCA_FIT_RULE}
    result["protocol"] = protocol_mod.card(kind="image", data=data, split=split, x=x, settings=settings,
                                           weights=weights)
    if precision:
        result["precision_audit"] = precision_audit(model, x[:8], lambda m, t: m.reconstruct(t))
    return result
