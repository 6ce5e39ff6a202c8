"""The autoencoder+GAN task computes latent-diffusion's gradients, with less work."""

import copy

import pytest
import torch

from eval.bench.reference_taming import build_reference, reference_gradients
from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.losses.reconstruction import ReconstructionLoss
from tokenizers_ae.models.kl_vae import KLVAE
from train.tasks import AutoencoderGANTask, StepContext

C, R = 3, 32


def assert_close_to(ours, ref, name, rel=1e-4, floor=0.0):
    """Equal up to float error relative to the tensor's scale (elementwise rtol fails near zero).
    `floor`: the least scale to measure against, for tensors that are analytically zero (a
    softmax's gradient wrt the key bias) and so hold only float noise of the other gradients."""
    err = (ours - ref).abs().max().item()
    assert err <= rel * max(ref.abs().max().item(), floor) + 1e-6, f"{name}: max error {err:.3g}"


def make_pair(disc_start: int, learn_logvar: bool = False):
    vae, ref_loss = build_reference(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=4,
                                    disc_start=disc_start, kl_weight=1e-2, disc_weight=0.5, disc_ndf=8)
    lp = LPIPS(backbone="random")
    ref_loss.perceptual_loss.load_state_dict(lp.net.state_dict())
    disc = NLayerDiscriminator(channels=8, n_layers=3, norm="batch")
    disc.load_state_dict(ref_loss.discriminator.state_dict())
    task = AutoencoderGANTask(
        autoencoder=KLVAE(copy.deepcopy(vae)), rec_loss=ReconstructionLoss(kind="l1", perceptual=lp),
        discriminator=disc, reg_weights={"kl": 1e-2}, lr=1e-4, disc_start=disc_start, disc_weight=0.5,
        learn_logvar=learn_logvar)
    return vae, ref_loss, task


def our_gradients(task, x, noise, step):
    models = {"generator": task.generator, "discriminator": task.discriminator}
    ctx = StepContext(step=step, noise=lambda shape: noise)
    task.generator.train()
    out = task.forward(models, {"x": x}, ctx)
    loss, logs = task.loss("generator", models, out, {"x": x}, ctx)
    task.generator.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in task.generator.autoencoder.vae.named_parameters()}
    if task.generator.logvar is not None:
        grads["logvar"] = task.generator.logvar.grad.clone()
    return grads, logs


@pytest.mark.parametrize("gan_on", [False, True])
def test_generator_gradient_equals_latent_diffusion(gan_on):
    torch.manual_seed(0)
    vae, ref_loss, task = make_pair(disc_start=0 if gan_on else 10**6)
    x = torch.rand(2, C, R, R) * 2 - 1
    noise = torch.randn(2, 2, R // 2, R // 2)
    ref = reference_gradients(vae, ref_loss, x, global_step=5, noise=noise)
    ours, logs = our_gradients(task, x, noise, step=5)
    # latent-diffusion sums its losses over values; ours are means: identical up to C*H*W.
    scale = C * R * R
    largest = max(r.abs().max().item() for r in ref.values())
    for name, g in ours.items():
        assert_close_to(g * scale, ref[name], name, floor=1e-3 * largest)
    assert ("gan/d_weight" in logs) == gan_on


def test_learned_logvar_gradient_matches():
    torch.manual_seed(1)
    vae, ref_loss, task = make_pair(disc_start=0, learn_logvar=True)
    with torch.no_grad():
        ref_loss.logvar.fill_(0.3)
        task.generator.logvar.fill_(0.3)
    x = torch.rand(2, C, R, R) * 2 - 1
    noise = torch.randn(2, 2, R // 2, R // 2)
    ref = reference_gradients(vae, ref_loss, x, global_step=0, noise=noise)
    ours, _ = our_gradients(task, x, noise, step=0)
    for name in ("logvar", "decoder.conv_out.weight", "encoder.conv_in.weight"):
        assert_close_to(ours[name] * C * R * R, ref[name], name)


def test_no_discriminator_work_before_disc_start():
    torch.manual_seed(0)
    _, _, task = make_pair(disc_start=3)
    calls = []
    task.discriminator.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, C, R, R) * 2 - 1
    assert [task.active("discriminator", s) for s in (0, 2, 3)] == [False, False, True]
    our_gradients(task, x, torch.zeros(2, 2, R // 2, R // 2), step=2)
    assert calls == []
    our_gradients(task, x, torch.zeros(2, 2, R // 2, R // 2), step=3)
    assert calls == [1]


def test_discriminator_phase_trains_only_the_discriminator():
    torch.manual_seed(0)
    _, _, task = make_pair(disc_start=0)
    models = {"generator": task.generator, "discriminator": task.discriminator}
    x = torch.rand(2, C, R, R) * 2 - 1
    ctx = StepContext(step=0, noise=lambda s: torch.zeros(s))
    out = task.forward(models, {"x": x}, ctx)
    loss, logs = task.loss("discriminator", models, out, {"x": x}, ctx)
    loss.backward()
    assert all(p.grad is None for p in task.generator.parameters())
    assert all(p.grad is not None for p in task.discriminator.parameters())
    assert set(logs) >= {"disc/loss", "disc/logits_real", "disc/logits_fake"}


def test_discriminator_warmup_trains_d_alone_before_the_onset():
    torch.manual_seed(2)
    _, _, task = make_pair(disc_start=2)
    warm = AutoencoderGANTask(autoencoder=task.generator.autoencoder, rec_loss=task.rec_loss,
                              discriminator=task.discriminator, reg_weights={"kl": 1e-2}, lr=1e-4, disc_start=2,
                              disc_warmup=3, ramp_steps=2)
    assert [warm.active("discriminator", s) for s in range(7)] == [False, False, True, True, True, True, True]
    assert [warm.gan_on(s) for s in range(7)] == [False] * 5 + [True, True]
    assert [warm.ramp(s) for s in (4, 5, 6, 7)] == [0.0, 0.5, 1.0, 1.0]  # the ramp starts at the onset
    x = torch.rand(2, C, R, R) * 2 - 1
    noise = torch.randn(2, 2, R // 2, R // 2)
    during, logs = our_gradients(warm, x, noise, step=3)  # D trains, G's gradient has no adversarial part
    assert "gan/d_weight" not in logs
    _, _, plain = make_pair(disc_start=10**6)
    plain.generator.autoencoder.load_state_dict(warm.generator.autoencoder.state_dict())
    without, _ = our_gradients(plain, x, noise, step=3)
    for name, g in during.items():
        torch.testing.assert_close(g, without[name], msg=name)
