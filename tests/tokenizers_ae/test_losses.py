"""Losses: LPIPS offline weights, reconstruction + logvar, GAN losses, PatchGAN."""

import pytest
import torch
import torchvision

from tokenizers_ae.discriminators.patchgan import NLayerDiscriminator
from tokenizers_ae.losses.adversarial import adaptive_weight, d_loss, g_loss
from tokenizers_ae.losses.perceptual import LPIPS
from tokenizers_ae.losses.reconstruction import ReconstructionLoss


@pytest.fixture(scope="module")
def lpips_random():
    return LPIPS(backbone="random")


def test_lpips_zero_on_identical_and_gradient_to_input_only(lpips_random):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    target = x.clone().requires_grad_(True)
    assert torch.allclose(lpips_random(x, x), torch.zeros(2), atol=1e-6)
    d = lpips_random(y, target)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0 and target.grad is None
    assert all(p.grad is None for p in lpips_random.parameters())


def test_lpips_matches_the_lpips_package(lpips_random):
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    ref = lpips_random.net(a, b).flatten()
    torch.testing.assert_close(lpips_random(a, b), ref, rtol=1e-4, atol=1e-6)


def test_lpips_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as e:
        LPIPS(backbone="vgg")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and "loss.perceptual_weights" in msg and "random" in msg


def test_lpips_loads_a_local_vgg16_state_dict(tmp_path):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    lp = LPIPS(backbone="vgg", weights_path=str(path))
    assert lp.pretrained
    torch.testing.assert_close(lp.net.net.slice1[0].weight, vgg.features[0].weight)
    torch.testing.assert_close(getattr(lp.net.net.slice5, "28").weight, vgg.features[28].weight)


def test_lpips_rejects_a_file_that_is_not_vgg(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        LPIPS(backbone="vgg", weights_path=str(path))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_chroma_weight_adds_only_the_colour_part_of_the_error(kind):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 6) * 2 - 1
    plain, weighted = ReconstructionLoss(kind=kind), ReconstructionLoss(kind=kind, chroma_weight=4.0)
    grey = x + 0.2  # the same error on R, G and B: no colour part
    assert weighted(grey, x)[0].item() == pytest.approx(plain(grey, x)[0].item(), rel=1e-6)
    assert weighted(grey, x)[1]["rec/chroma"].item() == pytest.approx(0.0, abs=1e-7)
    tint = (x + torch.tensor([0.3, 0.0, -0.3]).view(1, 3, 1, 1)).requires_grad_()  # pure colour error
    loss, logs = weighted(tint, x)
    colour = (0.3 if kind == "l1" else 0.09) * 2 / 3  # |(+0.3, 0, -0.3)| per channel, mean over RGB
    assert logs["rec/chroma"].item() == pytest.approx(colour, rel=1e-5)
    assert loss.item() == pytest.approx(plain(tint, x)[0].item() + 4.0 * colour, rel=1e-5)
    loss.backward()
    assert tint.grad.abs().sum() > 0
    # frames folded by PerFrame are images too; audio (B, 1, T) is not RGB
    with pytest.raises(ValueError, match="chroma_weight needs RGB images"):
        weighted(torch.zeros(2, 1, 100), torch.zeros(2, 1, 100))
    with pytest.raises(ValueError, match="chroma_weight must be >= 0"):
        ReconstructionLoss(chroma_weight=-1.0)


def test_reconstruction_loss_with_logvar():
    x = torch.zeros(2, 3, 4, 4)
    recon = torch.full_like(x, 0.5)
    loss, logs = ReconstructionLoss(kind="l1", perceptual=None)(recon, x)
    assert loss.item() == pytest.approx(0.5)
    lv = torch.tensor(1.0, requires_grad=True)
    loss, _ = ReconstructionLoss(kind="l2", perceptual=None)(recon, x, lv)
    assert loss.item() == pytest.approx(0.25 / torch.e + 1.0)
    loss.backward()
    assert lv.grad.item() == pytest.approx(1 - 0.25 / torch.e)


def test_gan_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert d_loss("hinge", real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert g_loss("hinge", fake).item() == pytest.approx(0.75)
    sp = torch.nn.functional.softplus
    assert d_loss("vanilla", real, fake).item() == pytest.approx(0.5 * (sp(-real).mean() + sp(fake).mean()).item())
    with pytest.raises(ValueError, match="hinge"):
        d_loss("wgan", real, fake)


def test_adaptive_weight_formula_and_clamp():
    a, b = torch.full((3,), 2.0), torch.full((3,), 1.0)
    expected = (a.norm() / (b.norm() + 1e-4)).item() * 0.5
    assert adaptive_weight(a, b, scale=0.5).item() == pytest.approx(expected)
    assert adaptive_weight(a, torch.zeros(3)).item() == pytest.approx(1e4)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_patchgan_shapes(norm):
    d = NLayerDiscriminator(channels=8, n_layers=3, norm=norm)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_haarpsi_distance_is_a_weight_free_differentiable_perceptual_term():
    from tokenizers_ae.losses.perceptual import HaarPSIDistance
    from tokenizers_ae.losses.reconstruction import ReconstructionLoss

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = HaarPSIDistance()
    assert list(d.parameters()) == []
    assert d(x, x).abs().max() < 1e-5
    slight, heavy = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert (d(slight.clamp(-1, 1), x) < d(heavy.clamp(-1, 1), x)).all()
    y = slight.clamp(-1, 1).requires_grad_(True)
    nll, logs = ReconstructionLoss(kind="l1", perceptual=d, perceptual_weight=0.5)(y, x)
    nll.backward()
    assert y.grad.abs().sum() > 0 and "rec/haarpsi" in logs and "rec/lpips" not in logs
    with pytest.raises(ValueError, match="at least 16x16"):
        d(x[..., :8, :8], x[..., :8, :8])


def test_temporal_reconstruction_penalises_flicker_not_a_steady_error():
    from tokenizers_ae.losses.frames import PerFrame, TemporalReconstruction
    from tokenizers_ae.losses.reconstruction import ReconstructionLoss

    x = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    steady = x + 0.1  # the same error on every frame
    sign = torch.tensor([1, -1, 1, -1, 1.0]).view(1, 1, 5, 1, 1)
    flicker = x + 0.1 * sign  # the same per-frame L1, alternating in time
    per_frame = PerFrame(ReconstructionLoss(kind="l1", perceptual_weight=0.0))
    loss = TemporalReconstruction(per_frame, weight=0.5)
    (a, logs_a), (b, logs_b) = loss(steady, x), loss(flicker, x)
    assert torch.allclose(per_frame(steady, x)[0], per_frame(flicker, x)[0])  # per frame they are equal
    assert logs_a["rec/temporal"] < 1e-6 and torch.isclose(logs_b["rec/temporal"], torch.tensor(0.2))
    assert torch.isclose(b - a, torch.tensor(0.5 * 0.2))
    # Weight 0 is the per-frame loss itself; images (4-D) pass through untouched.
    assert torch.equal(TemporalReconstruction(per_frame, weight=0.0)(flicker, x)[0], per_frame(flicker, x)[0])
    assert "rec/temporal" not in loss(x[:, :, 0], x[:, :, 0])[1]
    r = flicker.clone().requires_grad_(True)
    loss(r, x)[0].backward()
    assert r.grad is not None and torch.isfinite(r.grad).all()


def test_ms_ssim_distance_is_the_reported_metric_and_trains():
    from eval.image import reconstruction_metrics
    from tokenizers_ae.losses.perceptual import MSSSIMDistance, ms_ssim_betas
    from tokenizers_ae.losses.reconstruction import ReconstructionLoss

    assert len(ms_ssim_betas(64)) == 3 and len(ms_ssim_betas(256)) == 5 and ms_ssim_betas(16) == ()
    assert abs(sum(ms_ssim_betas(64)) - 1) < 1e-9
    torch.manual_seed(0)
    # A smooth image (random fields are uncorrelated noise, whose MS-SSIM the relu clamp zeroes).
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8), size=64, mode="bicubic").clamp(0, 1) * 2 - 1
    d = MSSSIMDistance()
    assert list(d.parameters()) == []
    assert d(x, x).abs().max() < 1e-5
    slight, heavy = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1), (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert (d(slight, x) < d(heavy, x)).all()
    # The loss is 1 - the MS-SSIM `aetk eval` reports (same scales, same weights).
    assert abs(float(1 - d(heavy, x).mean()) - reconstruction_metrics(x, heavy)["ms_ssim"]) < 1e-5
    y = heavy.clone().requires_grad_(True)
    nll, logs = ReconstructionLoss(kind="l2", perceptual=d, perceptual_weight=0.5)(y, x)
    nll.backward()
    assert y.grad.abs().sum() > 0 and "rec/ms_ssim" in logs and "rec/lpips" not in logs
    with pytest.raises(ValueError, match="at least 20x20"):
        d(x[..., :16, :16], x[..., :16, :16])


@pytest.mark.parametrize("name", ["MSSSIMDistance", "HaarPSIDistance"])
def test_weight_free_distances_run_in_fp32_under_a_bf16_autocast(name):
    """The trainer computes losses under the run's autocast. In bf16 the metrics' filters gave variances
    that cancel to noise (negative distances), and a bf16 photo race stalled a dB below fp32."""
    from tokenizers_ae.losses import perceptual

    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8), size=64, mode="bicubic").clamp(0, 1) * 2 - 1
    recon = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1).bfloat16().float()  # what a bf16 decoder hands over
    d = getattr(perceptual, name)()
    want = d(recon, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = d(recon, x)
    assert got.dtype == torch.float32 and (got >= 0).all()
    assert torch.allclose(got, want, atol=1e-6), (got, want)
