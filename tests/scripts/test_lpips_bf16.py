"""scripts/lpips_bf16.py: the LPIPS loss under bf16 autocast stays close to fp32 at the distances training
works at, and the script's comparison would see it if it did not."""


import torch
from helpers import load_script

from tokenizers_ae.losses.perceptual import LPIPS


def test_bf16_lpips_follows_fp32_at_training_distances():
    s = load_script("lpips_bf16")
    torch.manual_seed(0)
    lp, x = LPIPS(backbone="random"), s.photos(side=32, n=2)  # small: bf16 is emulated (slow) on AVX2 CPUs
    r = s.compare(lp, x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1))  # about 26 dB
    assert 25 < r["psnr_db"] < 27
    assert r["max_relative_error"] < 0.01 and r["gradient_cosine"] > 0.98, r
    # The comparison is not blind: near 46 dB the distance approaches bf16's rounding noise, and it shows.
    far = s.compare(lp, x, (x + 0.01 * torch.randn_like(x)).clamp(-1, 1))
    assert far["max_relative_error"] > 0.05 and far["gradient_cosine"] < r["gradient_cosine"], far
