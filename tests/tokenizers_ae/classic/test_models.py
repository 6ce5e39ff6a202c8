"""Each classic variant's defining property, on tiny models and random or real (digits) inputs."""

import pytest
import torch
from torch import nn

from tokenizers_ae.classic import (
    CORRUPTIONS,
    VAE,
    Autoencoder,
    ConditionalVAE,
    ContractiveAutoencoder,
    ConvAutoencoder,
    DenoisingAutoencoder,
    KLSparseAutoencoder,
    MaskedAutoencoder,
    Seq2SeqAutoencoder,
    StackedAutoencoder,
    TopKAutoencoder,
    TopKSAE,
    mlp,
    mlp_pair,
)
from tokenizers_ae.classic.sparse import bernoulli_kl
from tokenizers_ae.classic.vae import kl_to_standard_normal
from tokenizers_ae.classic.wae import imq_kernel, mmd
from train.recipe import config_from_dict

SHAPE = (1, 8, 8)


def cfg_for(variant: str, *extra: str):
    data = {"conv": ["data.path=builtin:skimage", "data.resolution=16"],
            "mae": ["data.path=builtin:skimage", "data.resolution=16", "model.patch_size=4"],
            "sae": ["data.path=builtin:lm-activations", "model.code_size=64"],
            "overcomplete": ["data.path=builtin:digits", "data.resolution=8", "model.in_channels=1",
                             "model.code_size=80"]}.get(
        variant, ["data.path=builtin:digits", "data.resolution=8", "model.in_channels=1"])
    return config_from_dict({}, ["model.kind=classic", f"model.variant={variant}",
                                 "model.hidden_sizes=[16,12]", "model.code_size=6",
                                 "model.channels=[4,8]", "model.vit_dim=16", *data, *extra])


VARIANTS = ["linear", "mlp", "deep", "conv", "overcomplete", "denoising", "sparse_kl", "sparse_l1", "topk",
            "contractive", "stacked", "recurrent", "vae", "cvae", "aae", "wae", "mae", "sae"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_reconstructs_its_input_shape_and_trains_every_parameter(variant):
    from train.families.classic import build_model as build_classic
    from train.families.classic import input_shape, reg_weights

    cfg = cfg_for(variant)
    torch.manual_seed(0)
    model = build_classic(cfg).train()
    x = torch.rand(5, *input_shape(cfg)) * 2 - 1
    out = model(x, y=torch.arange(5), noise=lambda s: torch.randn(s))
    assert out.recon.shape == x.shape
    assert out.latent.shape[0] == 5 and out.rec_loss.ndim == 0 and torch.isfinite(out.rec_loss)
    weights = reg_weights(cfg)
    assert set(out.reg) <= set(weights)  # every regulariser has a configured weight
    (out.rec_loss + sum(weights[k] * v for k, v in out.reg.items())).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], missing


def test_linear_autoencoder_is_linear():
    from train.families.classic import build_model as build_classic

    model = build_classic(cfg_for("linear")).eval()
    a, b = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    # Affine: f(a) + f(b) - f(0) = f(a + b).
    f = lambda t: model(t).recon
    torch.testing.assert_close(f(a) + f(b) - f(torch.zeros(1, *SHAPE)), f(a + b), atol=1e-5, rtol=1e-5)


def test_conv_autoencoder_halves_per_level_and_rejects_odd_sizes():
    m = ConvAutoencoder(input_shape=(3, 16, 16), channels=[4, 8], code_size=10)
    assert m.encoder[2](m.encoder[1](m.encoder[0](torch.zeros(1, 3, 16, 16)))).shape == (1, 8, 4, 4)
    assert m(torch.zeros(2, 3, 16, 16)).latent.shape == (2, 10)
    with pytest.raises(ValueError, match="divisible"):
        ConvAutoencoder(input_shape=(3, 12, 12), channels=[4, 8, 16], code_size=10)


@pytest.mark.parametrize("kind", ["gaussian", "masking", "salt_pepper"])
def test_corruptions_do_what_they_say_and_only_while_training(kind):
    torch.manual_seed(0)
    x = torch.rand(64, *SHAPE) * 1.6 - 0.8  # strictly inside (-1, 1), never exactly 0
    eps = torch.randn(x.shape)
    c = CORRUPTIONS[kind](0.3)(x, eps)
    changed = (c != x).float().mean()
    if kind == "gaussian":
        assert abs(float((c - x).std()) - 0.3) < 0.02
    elif kind == "masking":
        assert abs(float(changed) - 0.3) < 0.03 and set((c[c != x]).unique().tolist()) == {0.0}
    else:
        assert abs(float(changed) - 0.3) < 0.03 and set((c[c != x]).unique().tolist()) == {-1.0, 1.0}
        assert abs(float((c == -1).float().mean()) - float((c == 1).float().mean())) < 0.03
    enc, dec = mlp_pair(input_size=64, hidden_sizes=[16], code_size=4)
    dae = DenoisingAutoencoder(encoder=enc, decoder=dec, input_shape=SHAPE, code_size=4,
                               corruption=CORRUPTIONS[kind](0.3))
    plain = Autoencoder(encoder=enc, decoder=dec, input_shape=SHAPE, code_size=4)
    torch.testing.assert_close(dae.eval()(x).recon, plain(x).recon)  # evaluation: no corruption
    out = dae.train()(x, noise=lambda s: eps)
    torch.testing.assert_close(out.recon, plain(c).recon)  # training: the corrupted input, clean target
    torch.testing.assert_close(out.rec_loss, (plain(c).recon - x).pow(2).mean())


def test_kl_sparsity_penalty_is_zero_exactly_at_rho():
    enc, dec = mlp_pair(input_size=64, hidden_sizes=[], code_size=5, code_activation=nn.Sigmoid())
    m = KLSparseAutoencoder(rho=0.1, encoder=enc, decoder=dec, input_shape=SHAPE, code_size=5)
    z = torch.full((4, 5), 0.1)
    assert float(m.regularisers(None, z)["sparsity/kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(m.regularisers(None, torch.full((4, 5), 0.5))["sparsity/kl"]) == pytest.approx(
        5 * float(bernoulli_kl(0.1, torch.tensor(0.5))), rel=1e-5)


def test_topk_autoencoder_has_exactly_k_active_units():
    enc, dec = mlp_pair(input_size=64, hidden_sizes=[32], code_size=20)
    m = TopKAutoencoder(k=3, encoder=enc, decoder=dec, input_shape=SHAPE, code_size=20)
    x = torch.randn(50, *SHAPE)
    z = m(x).latent
    assert ((z != 0).sum(1) == 3).all()
    pre = m.encoder(x.flatten(1))  # the survivors are the 3 largest pre-activations
    torch.testing.assert_close(z.sort(1).values[:, -3:], pre.topk(3, dim=1).values.flip(1))


def test_contractive_penalty_equals_the_exact_jacobian_frobenius_norm():
    torch.manual_seed(0)
    m = ContractiveAutoencoder(input_shape=(1, 4, 4), code_size=7, hidden_sizes=[9]).double()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    closed = m.jacobian_frobenius_sq(m.encode(x))  # (3,)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: m.encode(v.view(1, 1, 4, 4)).squeeze(0), x[i].flatten())
        assert jac.shape == (7, 16)
        assert float(closed[i].detach()) == pytest.approx(float(jac.pow(2).sum()), rel=1e-10)
    out = m(x)
    # float32 in the loss
    assert float(out.reg["contractive"].detach()) == pytest.approx(float(closed.detach().mean()), rel=1e-6)


def test_stacked_stage_trains_only_its_own_layer():
    m = StackedAutoencoder(input_shape=SHAPE, hidden_sizes=[16, 12], code_size=6)
    x = torch.randn(4, *SHAPE)
    for stage in range(m.n_layers):
        m.zero_grad(set_to_none=True)
        m(x, stage=stage).rec_loss.backward()
        with_grad = {n.split(".")[:2][1] + ":" + n.split(".")[0] for n, p in m.named_parameters() if p.grad is not None}
        assert with_grad == {f"{stage}:encoders", f"{stage}:decoders"}
    m.zero_grad(set_to_none=True)
    m(x).rec_loss.backward()  # fine-tuning: everything
    assert all(p.grad is not None for p in m.parameters())
    # Stage i reconstructs the codes of the layers below, not the image.
    out = m(x, stage=1)
    h1 = m.encode(x, upto=1)
    torch.testing.assert_close(out.rec_loss, (m._dec(1, m._enc(1, h1)) - h1).pow(2).mean())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_seq2seq_reads_rows_in_order_and_decodes_from_the_code_alone(cell):
    torch.manual_seed(0)
    m = Seq2SeqAutoencoder(input_shape=SHAPE, hidden_size=12, code_size=5, cell=cell)
    x = torch.randn(3, *SHAPE)
    z = m.encode(x)
    x2 = x.clone()
    x2[:, :, -1] += 1.0  # the last row: the encoder's final state must have seen it
    assert not torch.allclose(m.encode(x2), z)
    x3 = x.clone()
    x3[:, :, 0], x3[:, :, 1] = x[:, :, 1], x[:, :, 0]  # order matters: a sequence, not a set
    assert not torch.allclose(m.encode(x3), z)
    torch.testing.assert_close(m(x).recon, m.decode(z))  # nothing but the code reaches the decoder


def _vae(cls=VAE, **kw):
    torch.manual_seed(0)
    extra = kw.get("num_classes", 0)
    return cls(encoder=mlp([64 + extra, 16, 2 * 3]), decoder=mlp([3 + extra, 16, 64]), input_shape=SHAPE,
               code_size=3, decoder_std=0.3, **kw)


def test_vae_kl_is_the_closed_form_and_the_loss_is_the_negative_elbo_per_value():
    m = _vae().train()
    x = torch.randn(6, *SHAPE)
    mean, logvar = m.posterior(x)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), torch.distributions.kl_divergence(q, p).sum(1))
    eps = torch.randn(6, 3)
    out = m(x, noise=lambda s: eps)
    g = torch.Generator().manual_seed(1)
    eps_elbo = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    elbo = m.elbo(x, samples=1, generator=g)
    # The same draw in both: -(rec_loss + kl) * D = mean ELBO.
    out_same = m(x, noise=lambda s: eps_elbo)
    assert float(-(out_same.rec_loss + out_same.reg["kl"]) * 64) == pytest.approx(float(elbo.mean()), rel=1e-5)
    assert out.latent.shape == (6, 3) and m.sample(4).shape == (4, *SHAPE)
    m.eval()
    torch.testing.assert_close(m(x).recon, m.decode(mean))  # evaluation decodes the posterior mean


def test_conditional_vae_uses_the_label():
    m = _vae(ConditionalVAE, num_classes=10)
    z = torch.randn(4, 3)
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert not torch.allclose(m.decode(z, zeros), m.decode(z, ones))
    assert m.sample(10, torch.arange(10)).shape == (10, *SHAPE)
    with pytest.raises(ValueError, match="needs labels"):
        m(torch.randn(2, *SHAPE))


def test_aae_task_trains_the_discriminator_only_in_its_own_phase():
    from train.families.classic import build_model, build_task
    from train.tasks import StepContext

    cfg = cfg_for("aae")
    task = build_task(cfg, build_model(cfg))
    models = {ph.name: ph.module for ph in task.phases()}
    assert list(models) == ["autoencoder", "latent_discriminator"]
    ctx = StepContext(step=0, noise=lambda s: torch.randn(s))
    out = task.forward(models, {"x": torch.randn(8, *SHAPE)}, ctx)
    loss, logs = task.loss("autoencoder", models, out, {}, ctx)
    loss.backward()
    assert "aae/g_loss" in logs
    assert all(p.grad is None for p in models["latent_discriminator"].parameters())  # frozen in the AE phase
    assert all(p.grad is not None for p in models["autoencoder"].parameters())
    models["autoencoder"].zero_grad(set_to_none=True)
    d_loss, _ = task.loss("latent_discriminator", models, out, {}, ctx)
    d_loss.backward()
    assert all(p.grad is None for p in models["autoencoder"].parameters())  # codes are detached
    assert all(p.grad is not None for p in models["latent_discriminator"].parameters())


def test_mmd_is_unbiased_and_separates_distributions():
    torch.manual_seed(0)
    a, b = torch.randn(200, 4), torch.randn(200, 4)
    assert abs(float(mmd(a, b, 8.0))) < 0.01
    assert float(mmd(a + 1.0, b, 8.0)) > 0.1
    small_a, small_b = torch.randn(5, 2), torch.randn(6, 2)
    k = lambda u, v: float(imq_kernel(u[None], v[None], 4.0))
    brute = (sum(k(small_a[i], small_a[j]) for i in range(5) for j in range(5) if i != j) / 20
             + sum(k(small_b[i], small_b[j]) for i in range(6) for j in range(6) if i != j) / 30
             - 2 * sum(k(u, v) for u in small_a for v in small_b) / 30)
    assert float(mmd(small_a, small_b, 4.0)) == pytest.approx(brute, rel=1e-5)


def _mae(ratio: float) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(input_shape=(3, 32, 32), patch_size=4, dim=64, depth=2, heads=4, mask_ratio=ratio)


def test_mae_encoder_sees_only_visible_patches_and_the_loss_only_hidden_ones():
    m = _mae(0.75)
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    tokens, mask, ids_restore = m.forward_encoder(x, noise)
    assert tokens.shape == (2, 1 + 16, 64) and mask.sum(1).tolist() == [48.0, 48.0]
    hidden = noise.argsort(1)[:, 16:]  # the highest noise values are hidden
    assert torch.equal(mask.gather(1, hidden), torch.ones(2, 48))
    out = m(x, mask_noise=noise)
    pred = m.forward_decoder(tokens, ids_restore).detach().requires_grad_(True)
    m.forward_loss(x, pred, mask).backward()
    visible = pred.grad.abs().sum(-1) * (1 - mask)
    assert float(visible.sum()) == 0.0  # no gradient through visible patches
    patches_in = m.mae.patchify(x)
    patches_out = m.mae.patchify(out.recon)
    torch.testing.assert_close(patches_out * (1 - mask[..., None]), patches_in * (1 - mask[..., None]))


def test_mae_encoder_flops_at_75_percent_masking_are_about_a_quarter():
    from torch.utils.flop_counter import FlopCounterMode

    masked, full = _mae(0.75).eval(), _mae(0.0).eval()
    full.load_state_dict(masked.state_dict())
    x, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 64)

    def flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m.forward_encoder(x, noise)
        return fc.get_total_flops()

    ratio = flops(masked) / flops(full)
    # 17 of 65 tokens (CLS included) go through the encoder: 0.26 for the linear layers, less for attention.
    assert 0.2 < ratio < 0.3, ratio


def test_topk_sae_sparsity_unit_dictionary_and_dead_latent_tracking():
    torch.manual_seed(0)
    sae = TopKSAE(d_model=16, n_latents=64, k=4, dead_steps=3).train()
    x = torch.randn(32, 16)
    out = sae(x)
    assert ((out.latent > 0).sum(1) <= 4).all() and float(out.stats["sae/l0"]) > 3.5
    torch.testing.assert_close(sae.dictionary().norm(dim=0), torch.ones(64))
    assert float(out.reg["auxk"]) == 0.0  # nothing is dead yet
    fired = (out.latent > 0).any(0)
    assert torch.equal(sae.steps_since_fired == 0, fired)
    for _ in range(3):
        out = sae(x)
    assert sae.dead.any() and not sae.dead[(out.latent > 0).any(0)].any()
    sae.zero_grad(set_to_none=True)
    out = sae(x)
    out.reg["auxk"].backward()  # AuxK: gradient reaches the dead latents' encoder rows
    dead = sae.dead
    assert float(out.reg["auxk"]) > 0 and sae.W_enc.grad[dead].abs().sum(1).gt(0).any()
    assert float(sae.W_enc.grad[~dead].abs().sum()) == 0.0
