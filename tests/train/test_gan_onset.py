"""A GAN phase started from weights (no discriminator state): with `loss.disc_warmup_steps` the onset
keeps held-out reconstruction and the guard has a baseline; without it, from step 0, the guard says
it has none."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import tiny_overrides

from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.models.kl_vae import KLVAE
from train.recipe import config_from_dict
from train.run import train

ARCH = ["model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.latent_channels=2",
        "train.mixed_precision=no", "data.builtin_size=256", "train.eval_every=100000", "train.log_every=10",
        "train.checkpoint_every=100000", "loss.guard_window=20"]


def held_out_psnr(path) -> float:
    """Mean PSNR (dB) of posterior-mean reconstructions of 32 held-out 16 px crops."""
    ds = build_image_dataset("builtin:skimage", resolution=16, random_crop=False, random_flip=False, split="val")
    x = torch.stack([ds[i]["x"] for i in range(min(32, len(ds)))])
    model = KLVAE.from_pretrained(path).eval()
    with torch.no_grad():
        mse = ((model.reconstruct(x).clamp(-1, 1) - x) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(4 / mse)).mean())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A model trained without a GAN: what a released VAE is to a fine-tune (weights, no D)."""
    out = tmp_path_factory.mktemp("gan") / "pre"
    train(config_from_dict({}, tiny_overrides(out, *ARCH, "train.max_steps=200", "loss.disc_start=1000000",
                                              "train.lr=2e-3"))).close()
    return out / "model"


def fine_tune(out, source, *extra):
    return train(config_from_dict({}, tiny_overrides(out, *ARCH, f"model.init_from={source}", "loss.disc_start=0",
                                                     "train.lr=1e-4", "train.ema_decay=0", "loss.guard=warn",
                                                     *extra)))


def test_warm_up_onset_keeps_held_out_psnr_and_gives_the_guard_a_baseline(pretrained, tmp_path, caplog):
    start = held_out_psnr(pretrained)
    with caplog.at_level(logging.WARNING, logger="aetk.guard"):
        trainer = fine_tune(tmp_path / "warm", pretrained, "loss.disc_warmup_steps=20", "train.max_steps=60")
    guard = trainer.guard.state()
    trainer.close()
    # The warm-up steps measured the baseline; 40 adversarial steps did not trip the guard.
    assert guard["baseline"] is not None and guard["trips"] == 0 and len(guard["after"]) == 20
    assert "GAN guard" not in caplog.text
    # Held-out reconstruction after the onset: within 0.5 dB of the model the GAN started from.
    assert held_out_psnr(tmp_path / "warm" / "model") > start - 0.5


def test_onset_at_step_zero_says_the_guard_has_no_baseline(pretrained, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="aetk.guard"):
        trainer = fine_tune(tmp_path / "cold", pretrained, "train.max_steps=3")
    assert trainer.guard.state()["baseline"] is None
    trainer.close()
    assert caplog.text.count("no reconstruction baseline") == 1 and "loss.disc_warmup_steps" in caplog.text
