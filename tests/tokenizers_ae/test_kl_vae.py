"""KL-VAE on diffusers AutoencoderKL: shapes, KL maths, injected noise."""

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl, gaussian_kl


def tiny(**kw):
    return build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2, **kw)


def test_gaussian_kl_matches_diffusers_on_images():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    ref = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)).kl()  # sums over [1, 2, 3]
    torch.testing.assert_close(gaussian_kl(mean, logvar), ref)


def test_gaussian_kl_reduces_every_non_batch_dim_for_audio():
    mean, logvar = torch.zeros(2, 4, 7), torch.zeros(2, 4, 7)
    assert torch.equal(gaussian_kl(mean, logvar), torch.zeros(2))
    mean[1] = 1.0
    torch.testing.assert_close(gaussian_kl(mean, logvar), torch.tensor([0.0, 0.5 * 28]))


def test_forward_shapes_and_kl_per_input_value():
    model = KLVAE(tiny()).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.latent.shape == (2, 2, 8, 8)  # f2
    mean, logvar = model.encode_moments(x)
    expected = gaussian_kl(mean, logvar).mean() / (3 * 16 * 16)
    torch.testing.assert_close(out.reg["kl"], expected)


def test_injected_noise_is_used_and_eval_uses_the_mean():
    model = KLVAE(tiny()).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, logvar = model.encode_moments(x)
    zero = model(x, noise=lambda shape: torch.zeros(shape))
    torch.testing.assert_close(zero.latent, mean)
    ones = model(x, noise=lambda shape: torch.ones(shape))
    torch.testing.assert_close(ones.latent, mean + torch.exp(0.5 * logvar))
    model.eval()
    torch.testing.assert_close(model(x).latent, mean)


def test_matches_diffusers_decode_and_last_layer_gets_gradient():
    model = KLVAE(tiny(), sample_posterior=False)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    out = model(x)
    with torch.no_grad():
        ref = model.vae(x, sample_posterior=False).sample
    torch.testing.assert_close(out.recon.detach(), ref)
    out.recon.sum().backward()
    assert model.last_layer.grad is not None and model.last_layer.grad.abs().sum() > 0
