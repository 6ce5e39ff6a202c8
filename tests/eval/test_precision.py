"""Precision audit: finds the layer that overflows fp16, and passes a model that does not."""

import torch

from eval.precision import first_nonfinite_module, precision_audit
from tokenizers_ae.models.kl_vae import build_autoencoder_kl


def tiny():
    torch.manual_seed(0)
    return build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).eval()


def decode(m, t):
    return m(t, sample_posterior=False).sample


def test_healthy_model_is_fp16_safe_and_reports_errors():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    r = precision_audit(tiny(), x, decode)
    assert r["fp16_safe"] and r["layers_over_fp16_range"] == [] and r["first_nonfinite_layer_fp16"] is None
    for p in ("bf16", "fp16"):
        assert r["precisions"][p]["output_finite"] and 0 < r["precisions"][p]["rel_error_vs_fp32"] < 0.1
    assert r["precisions"]["fp16"]["rel_error_vs_fp32"] < r["precisions"]["bf16"]["rel_error_vs_fp32"]
    assert r["peak_activations_fp32"][0]["max_abs"] >= r["peak_activations_fp32"][-1]["max_abs"]


def test_overflowing_decoder_is_caught_and_the_layer_named():
    vae = tiny()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e6)  # activations far beyond fp16's 65504
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    r = precision_audit(vae, x, decode)
    assert not r["fp16_safe"]
    assert "decoder.conv_in" in r["layers_over_fp16_range"]
    assert r["first_nonfinite_layer_fp16"] == "decoder.conv_in"
    assert r["peak_activations_fp32"][0]["fraction_of_fp16_max"] > 1
    assert not r["precisions"]["fp16"]["output_finite"] and r["precisions"]["bf16"]["output_finite"]


def test_first_nonfinite_module_in_fp32():
    vae = tiny()
    with torch.no_grad():
        vae.encoder.down_blocks[1].resnets[0].conv1.weight[0, 0, 0, 0] = float("nan")
    name = first_nonfinite_module(vae, decode, torch.rand(1, 3, 32, 32))
    assert name == "encoder.down_blocks.1.resnets.0.conv1"
