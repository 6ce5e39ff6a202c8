"""Claims from the literature, reproduced on scikit-learn's digits (shipped offline). The small models
are trained here directly with Adam for a few hundred to two thousand steps (seconds on one thread);
the recipes in configs/classic train the same modules through `aetk train` (tests/train/test_classic.py)."""

import math

import pytest
import torch
from torch import nn

from eval.classic import anomaly_auc, denoising_gain, image_rows, inpainting, pca_mse, pca_subspace_angle
from tokenizers_ae.classic import (
    CORRUPTIONS,
    VAE,
    Autoencoder,
    DenoisingAutoencoder,
    KLSparseAutoencoder,
    mlp,
    mlp_pair,
)
from tokenizers_ae.data.digits import digits_split

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    (x, y), (xv, yv) = digits_split("train"), digits_split("val")
    return x, y, xv, yv


def fit(model: nn.Module, x: torch.Tensor, *, steps: int, lr: float = 2e-3, batch: int | None = 64,
        weights: dict[str, float] | None = None, seed: int = 0) -> nn.Module:
    """Adam + cosine decay on rec_loss + weighted regularisers; batch None = the whole set."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        xb = x if batch is None else x[torch.randint(len(x), (batch,), generator=g)]
        out = model(xb, noise=lambda s: torch.randn(s, generator=g))
        loss = out.rec_loss + sum((weights or {}).get(k, 1.0) * v for k, v in out.reg.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def mlp_ae(cls=Autoencoder, *, hidden=(128,), code=8, code_activation=None, **kw):
    torch.manual_seed(0)
    enc, dec = mlp_pair(input_size=64, hidden_sizes=list(hidden), code_size=code, code_activation=code_activation)
    return cls(encoder=enc, decoder=dec, input_shape=SHAPE, code_size=code, **kw)


def test_linear_autoencoder_spans_the_pca_subspace(digits):
    """Bourlard & Kamp 1988, Baldi & Hornik 1989: the MSE optimum of a linear autoencoder with k
    code units spans the top-k principal subspace (its basis is not unique, the subspace is)."""
    x = digits[0]
    torch.manual_seed(0)
    lin = Autoencoder(encoder=nn.Linear(64, 4), decoder=nn.Linear(4, 64), input_shape=SHAPE, code_size=4)
    fit(lin, x, steps=2000, lr=2e-2, batch=None)
    assert pca_subspace_angle(lin, x) < 1.0  # degrees, largest principal angle


def test_deep_autoencoder_beats_pca_at_the_same_code_size(digits):
    """Hinton & Salakhutdinov 2006: a deep nonlinear code is better than PCA's of the same size."""
    x, _, xv, _ = digits
    deep = fit(mlp_ae(hidden=(128, 64), code=8), x, steps=1000)
    with torch.no_grad():
        mse = float((deep(xv).recon - xv).pow(2).mean())
    pca = pca_mse(x, xv, 8)
    assert mse < 0.75 * pca, (mse, pca)  # measured: 0.047 vs 0.095


@pytest.mark.parametrize("kind,level", [("gaussian", 0.5), ("masking", 0.3), ("salt_pepper", 0.3)])
def test_denoising_autoencoder_removes_the_noise_it_was_trained_on(digits, kind, level):
    x, _, xv, _ = digits
    dae = fit(mlp_ae(DenoisingAutoencoder, code=16, corruption=CORRUPTIONS[kind](level)), x, steps=500)
    gain = denoising_gain(dae, xv)
    assert gain["denoise_gain_db"] > 3.0, gain  # measured: +5 to +6 dB


def test_kl_sparse_autoencoder_reaches_the_target_rate(digits):
    x, _, xv, _ = digits
    rho = 0.05
    m = fit(mlp_ae(KLSparseAutoencoder, code=64, code_activation=nn.Sigmoid(), rho=rho), x, steps=1000,
            weights={"sparsity/kl": 0.1})
    with torch.no_grad():
        rates = m.encode(xv).mean(0)  # (64,) each unit's held-out mean activation
    assert abs(float(rates.mean()) - rho) < 0.01
    assert float((rates - rho).abs().median()) < 0.02  # per unit, not only on average


def test_beta_above_one_lowers_kl_and_raises_reconstruction_error(digits):
    x, _, xv, yv = digits

    def vae(beta):
        torch.manual_seed(0)
        m = VAE(encoder=mlp([64, 64, 16]), decoder=mlp([8, 64, 64]), input_shape=SHAPE, code_size=8, decoder_std=0.2)
        fit(m, x, steps=800, weights={"kl": beta})
        with torch.no_grad():
            out = m(xv)
            return m, float(out.stats["vae/kl_nats"]), float(out.stats["vae/mse"])

    m1, kl1, mse1 = vae(1.0)
    _, kl8, mse8 = vae(8.0)
    assert kl8 < 0.8 * kl1 and mse8 > 1.1 * mse1, (kl1, kl8, mse1, mse8)
    # Held-out ELBO (nats per image) is finite and below the reconstruction log-likelihood it bounds.
    elbo = m1.elbo(xv, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(elbo).all()
    rows = image_rows(m1, "vae", xv, yv)  # samples from the prior and a latent interpolation grid
    assert rows["samples"].shape == (8, *SHAPE) and rows["interpolation"].shape == (8, *SHAPE)
    # The interpolation starts and ends at the two images' reconstructions.
    torch.testing.assert_close(rows["interpolation"][0], rows["reconstructions"][0].clamp(-1, 1))


def test_reconstruction_error_detects_a_digit_never_seen_in_training(digits):
    """The seed's main industrial use: train on normal data, score by reconstruction error."""
    held_out = 8
    x, _ = digits_split("train", holdout_class=held_out)
    _, _, xv, yv = digits
    ae = fit(mlp_ae(hidden=(128, 64), code=8), x, steps=1000)
    with torch.no_grad():
        err = (ae(xv).recon - xv).pow(2).flatten(1).mean(1)
    auc = anomaly_auc(err, yv == held_out)
    assert auc > 0.9, auc  # measured: 0.98


def test_masking_trained_model_inpaints_better_than_the_mean_image(digits):
    x, _, xv, _ = digits
    dae = fit(mlp_ae(DenoisingAutoencoder, code=16, corruption=CORRUPTIONS["masking"](0.3)), x, steps=1000)
    r = inpainting(dae, xv, x)  # the central 4x4 square hidden
    assert r["inpaint_mse"] < 0.75 * r["inpaint_mean_image_mse"], r  # measured: 0.33 vs 0.56
    assert math.isfinite(r["inpaint_mse"])
