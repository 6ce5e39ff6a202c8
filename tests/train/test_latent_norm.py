"""Latent normalisation measured on data and written where diffusers reads it: SD3/FLUX-style shift and
scale for 16-channel latents, SDXL-style per-channel mean/std; carried through `aetk encode` and back."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from helpers import tiny_overrides

from aetk.cli import main
from latent_diffusion.sampling import decode_latents
from latent_diffusion.shards import LatentShardDataset
from tokenizers_ae.data.sources import build_image_dataset
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from train.recipe import config_from_dict
from train.run import train

SIXTEEN = ["model.latent_channels=16", "train.max_steps=2", "train.latent_stats_images=64", "loss.disc_start=100",
           "train.mixed_precision=no"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny 16-channel KL-VAE whose latents sit off zero (as FLUX's do, mean ~0.1 there) and whose
    architecture has a shift (as the sd3 / flux presets do), fine-tuned for two steps."""
    root = tmp_path_factory.mktemp("sixteen")
    torch.manual_seed(0)
    source = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=16)
    with torch.no_grad():
        source.quant_conv.bias[:16] += 1.0  # the posterior means' channels: every latent moves up by 1
    source.register_to_config(shift_factor=0.0)
    source.save_pretrained(root / "source")
    out = root / "run"
    train(config_from_dict({}, tiny_overrides(out, *SIXTEEN, f"model.init_from={root / 'source'}"))).close()
    return out


def posterior_samples(vae: AutoencoderKL, n: int = 64) -> torch.Tensor:
    """z ~ q(z|x) for the first n centre crops of builtin:skimage at 16 px: (n, 16, 8, 8)."""
    ds = build_image_dataset("builtin:skimage", resolution=16, random_crop=False, random_flip=False)
    x = torch.stack([ds[i]["x"] for i in range(n)])
    with torch.no_grad():
        return vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5))


def test_shift_and_scale_round_trip_through_the_diffusers_rule(run, tmp_path):
    # Measured again on the centre crops the check uses, in the model's own (shifted) layout.
    out = tmp_path / "vae"
    assert main(["export", str(run), "--out", str(out), "--data", "builtin:skimage", "--resolution", "16",
                 "--n", "64"]) == 0
    vae = AutoencoderKL.from_pretrained(out)
    c = vae.config
    assert c.shift_factor is not None and c.latents_mean is None
    z = posterior_samples(vae)
    normalised = (z - c.shift_factor) * c.scaling_factor  # SD3 / FLUX pipelines' rule
    assert abs(normalised.mean().item()) < 0.03 and abs(normalised.std().item() - 1) < 0.03
    # Without the shift the same latents are off-centre: the shift is measured, not a no-op.
    assert c.shift_factor > 0.5 and (z * c.scaling_factor).mean().item() > 0.5
    # model/ of the run itself carries the numbers measured at the end of training, and its card says so.
    assert AutoencoderKL.from_pretrained(run / "model").config.shift_factor is not None
    assert "- `shift_factor`: " in (run / "model" / "README.md").read_text()
    assert "- `shift_factor`: " in (out / "README.md").read_text()  # aetk export writes one too


def test_per_channel_option_round_trips(tmp_path):
    out = tmp_path / "run"
    train(config_from_dict({}, tiny_overrides(out, *SIXTEEN, "model.latent_norm=per_channel"))).close()
    vae = AutoencoderKL.from_pretrained(out / "model")
    c = vae.config
    assert c.scaling_factor == 1.0 and c.shift_factor is None and len(c.latents_mean) == 16
    stats = json.loads((out / "model" / "latent_stats.json").read_text())
    assert stats["latent_norm"] == "per_channel"
    z = posterior_samples(vae)
    mean, std = torch.tensor(c.latents_mean).view(1, -1, 1, 1), torch.tensor(c.latents_std).view(1, -1, 1, 1)
    normalised = (z - mean) * c.scaling_factor / std  # SDXL-style pipelines' rule
    per_channel_std = normalised.std(dim=(0, 2, 3))
    # Measured on 64 random training crops, checked on 64 centre crops: close, not equal.
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 0.3 and (per_channel_std - 1).abs().max() < 0.3


def test_encode_records_the_shift_and_priors_undo_it(run, tmp_path):
    out = tmp_path / "latents"
    assert main(["encode", str(run), "--data", "builtin:skimage", "--resolution", "16", "--builtin-size", "32",
                 "--precision", "no", "--out", str(out)]) == 0
    raw = LatentShardDataset(out)
    scaled = LatentShardDataset(out, scale=True)
    assert scaled.shift_factor == pytest.approx(json.loads((out / "manifest.json").read_text())["mean"])
    z = torch.stack([raw[i]["latent"] for i in range(len(raw))])
    zs = torch.stack([scaled[i]["latent"] for i in range(len(scaled))])
    assert abs(zs.mean().item()) < 1e-3 and abs(zs.std(correction=0).item() - 1) < 1e-3
    torch.testing.assert_close(scaled.unscale(zs), z, rtol=0, atol=1e-5)
    model = KLVAE.from_pretrained(run / "model").eval()
    with torch.no_grad():
        images = decode_latents(model, zs[:4], scaled.scaling_factor, shift_factor=scaled.shift_factor)
        torch.testing.assert_close(images, model.decode(z[:4]).float().clamp(-1, 1), rtol=0, atol=1e-5)
