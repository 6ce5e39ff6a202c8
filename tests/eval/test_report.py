"""aetk eval: metrics, baselines, plots; and the baselines themselves."""

import json

import pytest
import torch

from aetk.cli import main
from eval.baselines import PatchPCA, jpeg_quality_for_bpp, jpeg_roundtrip


def photos(n=8, r=32):
    from tokenizers_ae.data.sources import build_image_dataset

    ds = build_image_dataset("builtin:skimage", resolution=r, random_flip=False, split="val")
    return torch.stack([ds[i]["x"] for i in range(n)])


def test_patch_pca_is_exact_with_all_components_and_better_with_more():
    x = photos()
    full = PatchPCA(factor=4, channels=48).fit(x)
    torch.testing.assert_close(full.reconstruct(x), x, atol=1e-4, rtol=0)
    errs = [(PatchPCA(factor=4, channels=k).fit(x).reconstruct(x) - x).pow(2).mean() for k in (1, 4, 16)]
    assert errs[0] > errs[1] > errs[2]
    assert PatchPCA(factor=4, channels=3).fit(x).encode(x).shape == (8, 3, 8, 8)


def test_jpeg_bitrate_search_respects_the_target():
    x = photos(r=64)  # at 64x64 the JPEG header alone costs about 1.2 bits per pixel
    q, bpp = jpeg_quality_for_bpp(x, 3.0)
    assert 1 < q < 95 and bpp <= 3.0 < jpeg_roundtrip(x, q + 1)[1]
    hi, lo = jpeg_roundtrip(x, 90), jpeg_roundtrip(x, 10)
    assert hi[1] > lo[1] and (hi[0] - x).abs().mean() < (lo[0] - x).abs().mean()


def test_eval_cli_writes_metrics_baselines_grid_and_plot(tmp_path):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    torch.manual_seed(0)
    build_autoencoder_kl(block_out_channels=(8, 16, 16), norm_num_groups=4, latent_channels=4).save_pretrained(
        tmp_path / "vae")
    out = tmp_path / "res.json"
    assert main(["eval", str(tmp_path / "vae"), "--data", "builtin:skimage", "--resolution", "64", "--n", "6",
                 "--fit-n", "16", "--baseline", "jpeg", "--baseline", "pca", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    m = r["model"]
    assert m["latent_values"] == 4 * 16 * 16 and m["bpp"] == pytest.approx(4 * 16 * 16 * 16 / 64 ** 2)
    assert {"psnr", "ssim", "ms_ssim", "throughput_images_per_s"} <= m.keys()
    assert m["lpips"].startswith("unavailable") and m["rfid"].startswith("unavailable")
    assert r["jpeg"]["bpp"] <= m["bpp"] and r["pca"]["latent_values"] == m["latent_values"]
    # An untrained tokenizer loses to both classical codecs: the numbers must say so.
    assert r["pca"]["psnr"] > m["psnr"] and r["jpeg"]["psnr"] > m["psnr"]
    files = r["files"]
    assert set(files) == {"grid", "rd_plot", "comparison"}
    for f in files.values():
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_numbers_match_a_direct_torchmetrics_computation():
    from torchmetrics.image import (
        MultiScaleStructuralSimilarityIndexMeasure,
        PeakSignalNoiseRatio,
        StructuralSimilarityIndexMeasure,
    )

    from eval.report import evaluate, latent_rate
    from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl

    torch.manual_seed(0)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).eval()
    x = photos(n=4, r=64)
    r = evaluate(KLVAE(vae), x, rate=latent_rate)
    with torch.no_grad():
        recon = vae(x, sample_posterior=False).sample.clamp(-1, 1)
    a, b = (recon + 1) / 2, (x + 1) / 2
    psnr = torch.stack([PeakSignalNoiseRatio(data_range=1.0)(a[i:i + 1], b[i:i + 1]) for i in range(4)]).mean()
    assert r["model"]["psnr"] == pytest.approx(psnr.item(), rel=1e-5)
    assert r["model"]["ssim"] == pytest.approx(StructuralSimilarityIndexMeasure(data_range=1.0)(a, b).item(), rel=1e-5)
    betas = (0.0448, 0.2856, 0.3001)
    ms = MultiScaleStructuralSimilarityIndexMeasure(data_range=1.0, betas=tuple(x / sum(betas) for x in betas))(a, b)
    assert r["model"]["ms_ssim_scales"] == 3 and r["model"]["ms_ssim"] == pytest.approx(ms.item(), rel=1e-5)
    assert r["model"]["bpp"] == pytest.approx(2 * 32 * 32 * 16 / 64 ** 2)
    # The weight-free perceptual metrics are piq's own numbers on the same [0, 1] images.
    import piq

    for name, fn in (("haarpsi", piq.haarpsi), ("ms_gmsd", piq.multi_scale_gmsd), ("fsim", piq.fsim),
                     ("vif", piq.vif_p)):
        assert r["model"][name] == pytest.approx(float(fn(a.clamp(0, 1), b.clamp(0, 1), data_range=1.0)), rel=1e-4)


def test_weight_free_metrics_order_noise_and_say_when_images_are_too_small():
    from eval.image import reconstruction_metrics, weight_free_unavailable

    x = photos(n=4, r=64)
    g = torch.Generator().manual_seed(0)
    mild, strong = [(x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1) for s in (0.05, 0.3)]
    m, s_ = reconstruction_metrics(x, mild), reconstruction_metrics(x, strong)
    assert m["haarpsi"] > s_["haarpsi"] and m["fsim"] > s_["fsim"] and m["vif"] > s_["vif"]
    assert m["ms_gmsd"] < s_["ms_gmsd"]  # a deviation: lower is better
    small = reconstruction_metrics(x[..., :32, :32], mild[..., :32, :32])
    assert "vif" not in small and "haarpsi" in small
    assert weight_free_unavailable(32) == {"vif": "unavailable: needs images of at least 41 px (piq), these are 32"}
