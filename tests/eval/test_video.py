"""eval.video: video metrics (frames, HaarPSI, temporal), the space-time PCA baseline, strips, evaluate_videos."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval.video import SpaceTimePCA, evaluate_videos, save_video_strip, video_metrics


def smooth_videos(n=2, c=3, t=5, h=16, w=16, seed=0):
    """(n, c, t, h, w) in about [-0.6, 0.6]: smooth random content (so SSIM and HaarPSI see structure)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, t, h // 4, w // 4, generator=g) * 1.2 - 0.6
    return F.interpolate(low, size=(t, h, w), mode="trilinear", align_corners=False)


def noisy(x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


class Identity:
    def reconstruct(self, v):
        return v.clone()


class Noisy:
    def __init__(self, sigma):
        self.sigma = sigma

    def reconstruct(self, v):
        return noisy(v, self.sigma)


def test_perfect_reconstruction_scores_perfectly():
    x = smooth_videos()
    m = video_metrics(x, x.clone())
    assert m["psnr"] == math.inf and all(p == math.inf for p in m["psnr_per_frame"])
    assert len(m["psnr_per_frame"]) == 5
    assert m["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert m["haarpsi"] == pytest.approx(1.0, abs=1e-4)
    assert m["temporal_l1"] == 0.0 and m["temporal_psnr"] == math.inf


def test_flicker_costs_temporal_error_a_static_offset_does_not():
    x = smooth_videos(t=6) * 0.5  # room for the offsets without clamping
    d = 0.1  # in [-1, 1] units: 0.05 in [0, 1] units
    constant = x + d
    sign = torch.tensor([1.0, -1.0] * 3).view(1, 1, 6, 1, 1)
    flicker = x + d * sign
    mc, mf = video_metrics(x, constant), video_metrics(x, flicker)
    # Every frame is off by the same |offset|: the frame metrics cannot tell the two apart.
    assert mc["psnr_per_frame"] == pytest.approx(mf["psnr_per_frame"], abs=1e-3)
    assert mc["psnr"] == pytest.approx(-20 * math.log10(d / 2), abs=1e-3)
    assert mc["temporal_l1"] == pytest.approx(0.0, abs=1e-6) and mc["temporal_psnr"] > 100
    assert mf["temporal_l1"] == pytest.approx(d, abs=1e-5)  # each difference is off by 2 * d/2
    # Peak 1 for the differences too: an alternating error sits 6 dB below the frame PSNR.
    assert mf["temporal_psnr"] == pytest.approx(mf["psnr"] - 20 * math.log10(2), abs=1e-3)


def test_frame_metrics_order_noise_levels_and_handle_small_frames():
    x = smooth_videos(h=32, w=32)
    a, b = video_metrics(x, noisy(x, 0.05)), video_metrics(x, noisy(x, 0.2))
    for k in ("psnr", "ssim", "haarpsi", "temporal_psnr"):
        assert a[k] > b[k], k
    assert a["temporal_l1"] < b["temporal_l1"]
    assert a["psnr"] == pytest.approx(sum(a["psnr_per_frame"]) / 5, rel=1e-5)
    small = video_metrics(x[..., :8, :8], noisy(x, 0.05)[..., :8, :8])
    assert small["haarpsi"] is None and "16" in small["haarpsi_reason"]
    single = video_metrics(x[:, :, :1], x[:, :, :1])
    assert single["temporal_l1"] is None and single["temporal_reason"]


def low_rank_videos(n, c, k, ft, f, hh, ww, channels, seed=0):
    """Videos whose first-frame f x f patches lie in one affine space of dimension `channels` and whose
    f_t x f x f space-time patches after it lie in another, built without eval.video's patch layout."""
    g = torch.Generator().manual_seed(seed)
    z0, b0, mu0 = (torch.randn(n, channels, hh, ww, generator=g), torch.randn(channels, c, f, f, generator=g),
                   torch.randn(c, f, f, generator=g))
    z1, b1, mu1 = (torch.randn(n, channels, k, hh, ww, generator=g),
                   torch.randn(channels, c, ft, f, f, generator=g), torch.randn(c, ft, f, f, generator=g))
    first = torch.einsum("nkij,kcab->nciajb", z0, b0) + mu0[None, :, None, :, None, :]
    rest = torch.einsum("nkmij,kctab->ncmtiajb", z1, b1) + mu1[None, :, None, :, None, :, None, :]
    v = torch.cat([first.reshape(n, c, 1, hh * f, ww * f), rest.reshape(n, c, k * ft, hh * f, ww * f)], dim=2)
    return v / (1.1 * v.abs().max())  # a common scale keeps both spaces affine and the values in [-1, 1]


def test_space_time_pca_is_exact_on_low_rank_videos_with_the_vae_latent_count():
    c, k, ft, f, ch = 3, 2, 4, 2, 3
    v = low_rank_videos(6, c, k, ft, f, 4, 4, ch)  # (6, 3, 9, 8, 8)
    pca = SpaceTimePCA(ft, f, ch).fit(v)
    torch.testing.assert_close(pca.reconstruct(v), v, atol=1e-5, rtol=0)
    assert pca.encode(v).shape == (6, ch, 1 + k, 4, 4)
    assert pca.latent_values(v.shape) == ch * (1 + (9 - 1) // ft) * (8 // f) * (8 // f) == pca.encode(v)[0].numel()
    assert SpaceTimePCA(4, 8, 16).latent_values((3, 17, 64, 64)) == 16 * 5 * 8 * 8
    fewer = SpaceTimePCA(ft, f, ch - 1).fit(v)
    assert (fewer.reconstruct(v) - v).abs().mean() > 1e-3  # the test data needs all `ch` components


def test_space_time_pca_rejects_frames_the_codec_cannot_group():
    pca = SpaceTimePCA(4, 2, 3)
    with pytest.raises(ValueError, match="1 \\+ k \\* 4"):
        pca.fit(torch.zeros(2, 3, 6, 8, 8))
    with pytest.raises(ValueError, match="1 \\+ k \\* 4"):
        pca.latent_values((3, 8, 8, 8))
    with pytest.raises(ValueError, match="multiples"):
        pca.latent_values((3, 5, 9, 8))


def test_video_strip_has_a_row_per_video_reconstruction_and_error(tmp_path):
    x = smooth_videos(n=3, t=5, h=16, w=16)
    path = save_video_strip(x, noisy(x, 0.1), x, path=tmp_path / "s" / "strip.png", max_videos=2, max_frames=4)
    tile = 16 * 8 + 2  # default scale: 16 px -> 128 px, plus make_grid's 2 px padding
    rows = 2 * (1 + 2 + 1)  # per video: original, two reconstructions, error of the first
    with Image.open(path) as im:
        assert im.size == (4 * tile + 2, rows * tile + 2)
    with Image.open(save_video_strip(x, path=tmp_path / "o.png", scale=2)) as im:  # originals only, all frames
        assert im.size == (5 * 34 + 2, 3 * 34 + 2)


def test_evaluate_videos_orders_models_and_writes_the_strip(tmp_path):
    x, fit = smooth_videos(n=3, t=5, h=16, w=16), smooth_videos(n=4, t=5, h=16, w=16, seed=3)
    kw = dict(factor_t=4, factor_s=4, channels=4)
    ident = evaluate_videos(Identity(), x, fit_x=fit, out_dir=tmp_path, **kw)
    rough = evaluate_videos(Noisy(0.1), x, **kw)
    assert ident["model"]["psnr"] == math.inf and ident["model"]["temporal_l1"] == 0.0
    assert rough["model"]["psnr"] < 40 and rough["model"]["haarpsi"] < ident["model"]["haarpsi"]
    assert ident["pca"]["psnr"] < ident["model"]["psnr"] and ident["pca"]["fitted_on"] == "fit videos"
    assert rough["pca"]["fitted_on"] == "the evaluation videos" and "strip" not in rough
    assert ident["n"] == 3 and ident["frames"] == 5 and ident["resolution"] == [16, 16]
    assert ident["latent_values_per_video"] == 4 * 2 * 4 * 4
    with Image.open(ident["strip"]) as im:
        assert im.size == (5 * 130 + 2, 3 * 4 * 130 + 2)  # 3 videos x (original, model, pca, error)
    with pytest.raises(ValueError, match="frames"):
        evaluate_videos(Identity(), x[:, :, :4], **kw)
