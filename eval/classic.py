"""`aetk eval` of a classic autoencoder: held-out reconstruction beside PCA with the same code size,
and what each variant is for — the ELBO of a VAE, the sparsity of a sparse code, the PSNR a
denoiser gains, inpainting against the mean image, the ROC AUC of reconstruction error as an
anomaly score for a digit held out of training, dead latents and top-activating tokens of an SAE —
plus reconstructions, prior samples and latent interpolations as image rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from eval.image import save_reconstruction_grid, to_unit
from tokenizers_ae.classic.vae import kl_to_standard_normal
from tokenizers_ae.classic.wae import mmd
from tokenizers_ae.data.activations import LMActivations
from tokenizers_ae.data.digits import Digits
from tokenizers_ae.data.sources import build_image_dataset

GENERATIVE = ("vae", "cvae", "aae", "wae")
"""Variants with a prior to sample from."""


def _psnr(mse: float) -> float:
    """PSNR in dB for values on the [-1, 1] scale (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def _per_example_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)  # (B,)


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 256) -> torch.Tensor:
    """Deterministic reconstructions (eval mode: posterior means, no corruption, fixed MAE masks)."""
    model.eval()
    return torch.cat([model(x[s:s + batch], y=None if y is None else y[s:s + batch]).recon.float()
                      for s in range(0, len(x), batch)])


@torch.no_grad()
def evaluate_batch(model, batch: dict, *, grid: str | Path | None = None) -> dict[str, float]:
    """The trainer's periodic eval: MSE (and PSNR for images) on the validation batch, a grid for images."""
    was_training = model.training
    x, y = batch["x"], batch.get("y")
    recon = reconstruct(model, x, y)
    model.train(was_training)
    mse = float(_per_example_mse(recon, x).mean())
    out = {"eval/mse": mse}
    if x.ndim == 4:
        out["eval/psnr"] = _psnr(mse)
        if grid is not None:
            save_reconstruction_grid(x, recon.clamp(-1, 1), path=grid)
    return out


# --- data ---------------------------------------------------------------------------------------

def heldout_data(config: dict, n: int = 512) -> dict:
    """{"x": held-out examples, "y": labels or None, "fit": training examples (for PCA, the mean image),
    "dataset": the held-out dataset} for a classic model's data source (`config`: its
    `classic_config`, whose "data" says where it trained)."""
    d = config["data"]
    path, resolution = d["path"], d["resolution"]
    if path == "builtin:digits":
        val, train = Digits(split="val", resolution=resolution), Digits(split="train", resolution=resolution,
                                                                        holdout_class=d.get("holdout_class"))
        return {"x": val.x[:n], "y": val.y[:n], "fit": train.x, "dataset": val}
    if path == "builtin:lm-activations":
        acts = {s: LMActivations(lm=config["lm"], layer=config["lm_layer"], n_tokens=config["lm_tokens"], split=s)
                for s in ("train", "val")}
        return {"x": acts["val"].acts[:n], "y": None, "fit": acts["train"].acts, "dataset": acts["val"]}
    builtin, val_path = path.startswith("builtin:"), d.get("val_path")
    common = dict(resolution=resolution, random_crop=False, random_flip=False, builtin_size=d.get("builtin_size", 512))
    train = build_image_dataset(path, split="train", **common)
    val = build_image_dataset(val_path or path, split="val" if builtin and not val_path else "train", **common)
    start = 0 if (builtin or val_path) else min(n, len(train) // 2)  # a folder: hold out its first images
    x = torch.stack([val[i]["x"] for i in range(min(n, len(val) if start == 0 else start))])
    fit = torch.stack([train[i]["x"] for i in range(start, len(train))])
    return {"x": x, "y": None, "fit": fit, "dataset": val}


# --- metrics ------------------------------------------------------------------------------------

def pca_mse(fit: torch.Tensor, x: torch.Tensor, components: int) -> float | None:
    """Held-out MSE of PCA with `components` components fitted on `fit`; None if that is the whole space."""
    from sklearn.decomposition import PCA  # scikit-learn: heavy, only these metrics need it

    f, xx = fit.flatten(1).numpy().astype(np.float64), x.flatten(1).numpy().astype(np.float64)
    if components >= min(f.shape):
        return None
    pca = PCA(n_components=components).fit(f)
    return float(np.mean((pca.inverse_transform(pca.transform(xx)) - xx) ** 2))


def pca_subspace_angle(model, fit: torch.Tensor) -> float:
    """Largest principal angle (degrees) between a linear autoencoder's decoder columns and the
    span of PCA's top code_size components fitted on the same data."""
    from scipy.linalg import subspace_angles  # scipy: only this metric needs it
    from sklearn.decomposition import PCA  # scikit-learn: heavy, only these metrics need it

    pca = PCA(n_components=model.code_size).fit(fit.flatten(1).numpy().astype(np.float64))
    w = model.decoder.weight.detach().double().numpy()  # (D, code)
    return float(np.degrees(subspace_angles(w, pca.components_.T).max()))


def anomaly_auc(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """ROC AUC of `scores` (higher = more anomalous) against the boolean labels."""
    from sklearn.metrics import roc_auc_score  # scikit-learn: heavy, only this metric needs it

    return float(roc_auc_score(is_anomaly.numpy().astype(int), scores.numpy()))


def centre_mask(shape: tuple[int, ...]) -> torch.Tensor:
    """(C, H, W) bool, True on the central (H/2 x W/2) square: the region inpainting fills."""
    c, h, w = shape
    m = torch.zeros(shape, dtype=torch.bool)
    m[:, h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = True
    return m


@torch.no_grad()
def inpainting(model, x: torch.Tensor, fit: torch.Tensor, *, fill: float = 0.0) -> dict[str, float]:
    """Hide the central square (set to `fill`, what masking noise writes), let the model fill it, and
    compare the error there with the mean training image's (the best guess that ignores the rest)."""
    m = centre_mask(tuple(x.shape[1:]))
    hidden = torch.where(m, torch.full_like(x, fill), x)
    filled = reconstruct(model, hidden)
    region = lambda t: t[:, m]  # (N, values in the region)
    mean_image = fit.float().mean(0, keepdim=True).expand_as(x)
    return {"inpaint_mse": float((region(filled) - region(x)).pow(2).mean()),
            "inpaint_mean_image_mse": float((region(mean_image) - region(x)).pow(2).mean())}


@torch.no_grad()
def denoising_gain(model, x: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """PSNR of noisy and denoised images against the clean ones, with the model's own corruption."""
    g = torch.Generator().manual_seed(seed)
    noisy = model.corruption(x, torch.randn(x.shape, generator=g))
    den = reconstruct(model, noisy)
    p_noisy, p_den = _psnr(float(_per_example_mse(noisy, x).mean())), _psnr(float(_per_example_mse(den, x).mean()))
    return {"psnr_noisy": p_noisy, "psnr_denoised": p_den, "denoise_gain_db": p_den - p_noisy}


@torch.no_grad()
def sae_report(model, data: dict, *, features: int = 8, top: int = 5) -> dict:
    """Dead latents (never fired on the held-out tokens; and by the training tracker), L0, fraction
    of variance unexplained, and the tokens (in context) that most activate the most used features."""
    ds = data["dataset"]
    x = ds.acts
    z = torch.cat([model.encode(x[s:s + 1024]) for s in range(0, len(x), 1024)])  # (N, n)
    recon = model.decode(z)
    fired = (z > 0).sum(0)  # (n,)
    fvu = float((recon - x).pow(2).sum(1).mean() / (x - x.mean(0)).pow(2).sum(1).mean())
    report = {}
    for j in fired.argsort(descending=True)[:features].tolist():
        idx = z[:, j].argsort(descending=True)[:top].tolist()
        report[f"feature {j}"] = [f"{float(z[i, j]):.2f} {ds.context(i)}" for i in idx]
    return {"l0": float((z > 0).float().sum(1).mean()), "fvu": fvu,
            "dead_latents_heldout": int((fired == 0).sum()),
            "dead_fraction_heldout": float((fired == 0).float().mean()),
            "dead_latents_tracked": int(model.dead.sum()), "latents": int(z.shape[1]), "top_activations": report}


@torch.no_grad()
def image_rows(model, variant: str, x: torch.Tensor, y: torch.Tensor | None, n: int = 8, seed: int = 0) -> dict:
    """{"originals", "reconstructions", "samples" (prior draws, generative variants), "interpolation"
    (decoded straight line between the codes of two held-out images)}: tensors (n, C, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    if y is not None:  # one example per class (0, 1, 2, ...) when there are labels
        first = [int((y == c).nonzero()[0]) for c in y.unique().tolist()[:n]]
        keep = first + [i for i in range(len(x)) if i not in first][:n - len(first)]
        x, y = x[keep], y[keep]
    rows = {"originals": x[:n], "reconstructions": reconstruct(model, x[:n], None if y is None else y[:n])}
    if variant in GENERATIVE:
        labels = None if variant != "cvae" else torch.arange(n) % model.num_classes
        rows["samples"] = model.sample(n, labels, generator=g)
    if variant not in ("mae",) and hasattr(model, "encode") and hasattr(model, "decode"):
        # From the first image to the first one of another class (or the middle one, without labels).
        j = int((y != y[0]).nonzero()[0]) if y is not None and bool((y != y[0]).any()) else len(x) // 2
        za = model.encode(x[0:1], **({} if variant != "cvae" else {"y": y[:1]}))
        zb = model.encode(x[j:j + 1], **({} if variant != "cvae" else {"y": y[j:j + 1]}))
        t = torch.linspace(0, 1, n).unsqueeze(1)  # (n, 1)
        z = (1 - t) * za + t * zb  # (n, code)
        # A CVAE decodes with the first image's label throughout: only the style is interpolated.
        rows["interpolation"] = model.decode(z, **({} if variant != "cvae" else {"y": y[:1].expand(n)}))
    return {k: v.float().clamp(-1, 1) for k, v in rows.items()}


@torch.no_grad()
def evaluate_classic(model, *, data: dict | None = None, n: int = 512, seed: int = 0) -> dict:
    """Every metric of one classic model, as {"metrics": {...}, "rows": image rows (images only)}, on
    held-out examples of the data it trained on (`data`: another source of the same shape, as
    {"path", "resolution", ...})."""
    config = {**model.classic_config, **({"data": {**model.classic_config["data"], **data}} if data else {})}
    variant = config["variant"]
    holdout = config["data"].get("holdout_class")
    model.eval()
    data = heldout_data(config, n)
    x, y, fit = data["x"], data["y"], data["fit"]
    normal = torch.ones(len(x), dtype=torch.bool) if holdout is None or y is None else y != holdout
    recon = reconstruct(model, x, y)
    err = _per_example_mse(recon, x)  # (N,)
    m: dict = {"variant": variant, "data": config["data"]["path"].removeprefix("builtin:"),
               "input_shape": list(x.shape[1:]), "code_size": int(model.code_size),
               "heldout_examples": int(normal.sum()),
               "mse": float(err[normal].mean())}
    if x.ndim == 4:
        m["psnr"] = _psnr(m["mse"])
    # PCA with as many numbers per example as the code (top-k codes: as many as are nonzero).
    comps = int(getattr(model, "k", model.code_size)) if variant in ("topk", "sae") else int(model.code_size)
    if variant != "mae":  # the MAE's code is a token sequence and its output completes a masked image
        m["pca_components"] = comps
        m["pca_mse"] = pca_mse(fit, x[normal], comps)
    if variant in ("vae", "cvae"):
        g = torch.Generator().manual_seed(seed)
        elbo = torch.cat([model.elbo(x[s:s + 256], None if y is None else y[s:s + 256], generator=g)
                          for s in range(0, len(x), 256)])
        mean, logvar = model.posterior(x, y)
        m.update(elbo_nats=float(elbo[normal].mean()),
                 kl_nats=float(kl_to_standard_normal(mean, logvar)[normal].mean()),
                 beta=config["beta"])
    if variant == "linear":  # Baldi & Hornik: the optimum spans the principal subspace
        m["pca_max_angle_deg"] = pca_subspace_angle(model, fit)
    if variant in GENERATIVE:  # how close the held-out codes are to the N(0, I) prior samples are drawn from
        codes = model.encode(x, **({"y": y} if variant == "cvae" else {}))
        prior = torch.randn(codes.shape, generator=torch.Generator().manual_seed(seed))
        m["prior_mmd"] = float(mmd(codes.float(), prior, scale=2.0 * codes.shape[1]))
    if variant in ("sparse_kl", "sparse_l1", "overcomplete", "topk"):
        z = model.encode(x)
        m.update(mean_activation=float(z.mean()), active_per_example=float((z.abs() > 1e-6).float().sum(1).mean()))
        if variant == "sparse_kl":
            m["rho"] = config["rho"]
    if variant == "contractive":
        m["jacobian_frobenius_sq"] = float(model.jacobian_frobenius_sq(model.encode(x)).mean())
    if variant == "denoising":
        m.update(corruption=config["corruption"], **denoising_gain(model, x[normal], seed))
        if config["corruption"] == "masking" and x.ndim == 4:
            m.update(inpainting(model, x[normal], fit))
    if variant == "mae":  # how much better than guessing the mean image the completion is
        m["mean_image_mse"] = float(_per_example_mse(fit.float().mean(0, keepdim=True).expand_as(x), x).mean())
        m["mask_ratio"] = config["mask_ratio"]
    if variant == "sae":
        m.update(sae_report(model, data))
    if holdout is not None and y is not None:
        m["holdout_class"] = holdout
        m["anomaly_auc"] = anomaly_auc(err, ~normal)
    rows = image_rows(model, variant, x[normal], None if y is None else y[normal], seed=seed) if x.ndim == 4 else {}
    return {"metrics": m, "rows": rows}


# --- presentation -------------------------------------------------------------------------------

TABLE_HEADER = ("| recipe | data | code | held-out MSE | PSNR (dB) | PCA MSE, same code | what the variant is for |\n"
                "| --- | --- | --- | --- | --- | --- | --- |")


def _fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def highlight(m: dict) -> str:
    """The variant's own metric, in words."""
    v = m["variant"]
    parts = []
    if m.get("pca_mse") and v not in ("sae",):
        parts.append(f"{m['mse'] / m['pca_mse'] - 1:+.0%} error vs PCA")
    if "pca_max_angle_deg" in m:
        parts.append(f"largest principal angle to the PCA subspace {m['pca_max_angle_deg']:.1f}°")
    if "prior_mmd" in m:
        parts.append(f"codes-to-prior MMD {m['prior_mmd']:.3f}")
    if "elbo_nats" in m:
        parts.append(f"ELBO {m['elbo_nats']:.1f} nats, KL {m['kl_nats']:.1f} nats (beta {m['beta']:g})")
    if v == "sparse_kl":
        parts.append(f"mean activation {m['mean_activation']:.3f} (rho {m['rho']:g})")
    elif v in ("sparse_l1", "overcomplete", "topk"):
        parts.append(f"{m['active_per_example']:.1f} of {m['code_size']} units active")
    if v == "contractive":
        parts.append(f"mean ‖J‖²_F {m['jacobian_frobenius_sq']:.3f}")  # no '|': it would split the table cell
    if "denoise_gain_db" in m:
        parts.append(f"{m['corruption']} noise: {m['psnr_noisy']:.1f} -> {m['psnr_denoised']:.1f} dB "
                     f"({m['denoise_gain_db']:+.1f})")
    if "inpaint_mse" in m:
        parts.append(f"inpainting MSE {m['inpaint_mse']:.3f} vs mean image {m['inpaint_mean_image_mse']:.3f}")
    if v == "mae":
        parts.append(f"{m['mask_ratio']:.0%} of patches hidden; mean image MSE {m['mean_image_mse']:.3f}")
    if v == "sae":
        parts.append(f"L0 {m['l0']:.1f}, FVU {m['fvu']:.3f}, dead {m['dead_latents_heldout']}/{m['latents']} "
                     f"(held-out), {m['dead_latents_tracked']} (tracked)")
    if "anomaly_auc" in m:
        parts.append(f"anomaly ROC AUC {m['anomaly_auc']:.3f} (digit {m['holdout_class']} unseen)")
    return "; ".join(parts)


def table_row(name: str, m: dict, train: str | None = None) -> str:
    """A markdown row under TABLE_HEADER (plus a `training` cell when given)."""
    return (f"| {name} | {m['data']} | {m['code_size']} | {_fmt(m['mse'], '.3g')} | {_fmt(m.get('psnr'), '.2f')} | "
            f"{_fmt(m.get('pca_mse'), '.3g')} | {highlight(m)} |" + (f" {train} |" if train else ""))


def save_rows_figure(entries: list[tuple[str, dict[str, torch.Tensor]]], path: str | Path) -> Path:
    """One PNG, a row per (name, rows): originals over reconstructions, prior samples, interpolation."""
    import matplotlib  # matplotlib: heavy, only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, only figures need it

    columns = [("originals / reconstructions", ("originals", "reconstructions")), ("prior samples", ("samples",)),
               ("latent interpolation", ("interpolation",))]
    fig, axes = plt.subplots(len(entries), 3, figsize=(11, 0.75 * len(entries) + 0.4), squeeze=False)
    for r, (name, rows) in enumerate(entries):
        for c, (title, kinds) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
            imgs = [rows[k] for k in kinds if k in rows]
            if not imgs:
                ax.axis("off")
                continue
            grid = make_grid(to_unit(torch.cat(imgs).cpu()), nrow=len(imgs[0]), padding=1, pad_value=1.0)
            ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
