"""scripts/lpips_bf16.py: the LPIPS loss under bf16 autocast stays close to fp32 at the distances training
works at, and the script's comparison would see it if it did not."""

import importlib.util
from pathlib import Path

import torch

from tokenizers_ae.losses.perceptual import LPIPS

REPO = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("lpips_bf16", REPO / "scripts/lpips_bf16.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_lpips_follows_fp32_at_training_distances():
    s = load_script()
    torch.manual_seed(0)
    lp, x = LPIPS(backbone="random"), s.photos(side=32, n=2)  # small: bf16 is emulated (slow) on AVX2 CPUs
    r = s.compare(lp, x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1))  # about 26 dB
    assert 25 < r["psnr_db"] < 27
    assert r["max_relative_error"] < 0.01 and r["gradient_cosine"] > 0.98, r
    # The comparison is not blind: near 46 dB the distance approaches bf16's rounding noise, and it shows.
    far = s.compare(lp, x, (x + 0.01 * torch.randn_like(x)).clamp(-1, 1))
    assert far["max_relative_error"] > 0.05 and far["gradient_cosine"] < r["gradient_cosine"], far
