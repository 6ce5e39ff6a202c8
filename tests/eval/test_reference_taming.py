"""Fast checks of the taming / latent-diffusion reference loop used by the benchmark."""

import math

import pytest
import torch

from eval.bench.reference_taming import (
    NLayerDiscriminator,
    ReferenceTrainer,
    adopt_weight,
    build_reference,
    hinge_d_loss,
    reference_gradients,
    vanilla_d_loss,
)

TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2, disc_ndf=8)
B, RES = 2, 32
DISC_WEIGHT = 0.5
KL_WEIGHT = 1e-6


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, RES, RES, generator=g) * 2 - 1


def _noise(vae, x, seed=1):
    with torch.no_grad():
        shape = vae.encode(x).latent_dist.mean.shape
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _hand_terms(vae, loss, x, noise):
    """nll, kl, g_loss computed by hand exactly as contperceptual.py defines them."""
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.mean + post.std * noise).sample
    rec_loss = (x - rec).abs() + loss.perceptual_loss(x, rec)
    nll = (rec_loss / torch.exp(loss.logvar) + loss.logvar).sum() / x.shape[0]
    kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).sum() / x.shape[0]
    g_loss = -loss.discriminator(rec).mean()
    return nll, kl, g_loss, rec, post


def _params(vae, loss):
    named = [(n, p) for n, p in vae.named_parameters()] + [("logvar", loss.logvar)]
    return [n for n, _ in named], [p for _, p in named]


def _assert_grads_close(ref, names, hand):
    assert set(ref) == set(names)
    for n, h in zip(names, hand):
        h = torch.zeros_like(ref[n]) if h is None else h
        torch.testing.assert_close(ref[n], h, rtol=1e-4, atol=1e-7, msg=lambda m, n=n: f"{n}: {m}")


def test_discriminator_layout_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=8)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) and c.padding == (1, 1) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert len(bns) == 3
    assert d(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 2, 2)
    assert adopt_weight(1.0, 5, threshold=10) == 0.0 and adopt_weight(1.0, 10, threshold=10) == 1.0
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    assert math.isclose(float(hinge_d_loss(real, fake)), 0.5 * (0.5 + 0.75))
    assert float(vanilla_d_loss(real, fake)) > 0


def test_step_runs_and_is_finite():
    vae, loss = build_reference(disc_start=0, **TINY)
    trainer = ReferenceTrainer(vae, loss)
    out = trainer.step(_data(), global_step=0)
    assert set(out) >= {"aeloss", "discloss", "nll", "kl", "g_loss", "d_weight"}
    assert all(math.isfinite(v) for v in out.values()), out
    assert out["d_weight"] > 0 and out["discloss"] > 0
    # toggle_optimizer is undone after the step
    assert all(p.requires_grad for p in loss.discriminator.parameters())
    assert not any(p.requires_grad for p in loss.perceptual_loss.parameters())
    assert not loss.perceptual_loss.training and loss.discriminator.training


def test_before_disc_start_gan_term_contributes_nothing():
    vae, loss = build_reference(
        disc_start=10**9, kl_weight=KL_WEIGHT, disc_weight=DISC_WEIGHT, **TINY
    )
    x = _data()
    noise = _noise(vae, x)
    ref = reference_gradients(vae, loss, x, global_step=5, noise=noise)

    names, params = _params(vae, loss)
    nll, kl, g_loss, rec, post = _hand_terms(vae, loss, x, noise)
    hand = torch.autograd.grad(nll + KL_WEIGHT * kl, params, allow_unused=True, retain_graph=True)
    _assert_grads_close(ref, names, hand)

    # ... yet the adaptive weight (and the discriminator forward) is still computed: LDM
    # gates it on the constant disc_factor, not on disc_start.
    _, log = loss(x, rec, post, 0, 5, last_layer=vae.decoder.conv_out.weight)
    assert float(log["train/disc_factor"]) == 0.0
    assert float(log["train/d_weight"]) > 0.0


def test_adaptive_weight_after_disc_start():
    vae, loss = build_reference(disc_start=0, kl_weight=KL_WEIGHT, disc_weight=DISC_WEIGHT, **TINY)
    x = _data()
    noise = _noise(vae, x)
    last = vae.decoder.conv_out.weight

    nll, kl, g_loss, rec, post = _hand_terms(vae, loss, x, noise)
    g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_g = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_weight = (g_nll.norm() / (g_g.norm() + 1e-4)).clamp(0, 1e4) * DISC_WEIGHT

    _, log = loss(x, rec, post, 0, 3, last_layer=last)
    assert float(log["train/disc_factor"]) == 1.0
    torch.testing.assert_close(log["train/d_weight"], d_weight.detach(), rtol=1e-5, atol=0)

    # full generator gradient = grad(nll + kl_weight*kl + d_weight*g_loss), d_weight constant
    names, params = _params(vae, loss)
    hand = torch.autograd.grad(nll + KL_WEIGHT * kl + d_weight.detach() * g_loss, params,
                               allow_unused=True)
    ref = reference_gradients(vae, loss, x, global_step=3, noise=noise)
    _assert_grads_close(ref, names, hand)


@pytest.mark.parametrize("disc_start", [0, 10**9])
def test_step_updates_discriminator_only_after_disc_start(disc_start):
    vae, loss = build_reference(disc_start=disc_start, **TINY)
    trainer = ReferenceTrainer(vae, loss)
    d_before = [p.detach().clone() for p in loss.discriminator.parameters()]
    g_before = [p.detach().clone() for p in vae.parameters()]
    trainer.step(_data(), global_step=0)
    d_after = loss.discriminator.parameters()
    d_changed = any(not torch.equal(a, p) for a, p in zip(d_before, d_after))
    g_changed = any(not torch.equal(a, p) for a, p in zip(g_before, vae.parameters()))
    assert g_changed
    assert d_changed == (disc_start == 0)
