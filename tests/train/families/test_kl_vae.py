"""The kl_vae family's model section: `model.preset` builds a released layout, reads a third-party single
file of it, and refuses a model of another layout instead of ignoring the preset."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import tiny_overrides
from safetensors.torch import save_file

from tokenizers_ae.export.sd_single_file import diffusers_to_ldm_vae
from tokenizers_ae.models.kl_vae import build_autoencoder_kl
from tokenizers_ae.models.presets import build_preset
from train.config import ConfigError
from train.families import kl_vae
from train.recipe import config_from_dict


def cfg(tmp_path, *extra):
    return config_from_dict({}, tiny_overrides(tmp_path / "run", *extra))


def test_a_preset_builds_the_released_layout(tmp_path):
    vae = kl_vae.build_model(cfg(tmp_path, "model.preset=sd3")).vae
    assert vae.config.latent_channels == 16 and vae.quant_conv is None and vae.config.shift_factor == 0.0609
    assert list(vae.config.block_out_channels) == [128, 256, 512, 512]  # the preset wins over the tiny keys


def test_a_third_party_single_file_is_read_in_the_presets_layout_and_another_layout_refused(tmp_path):
    torch.manual_seed(0)
    flux = build_preset("flux")
    ldm = diffusers_to_ldm_vae(flux.state_dict(), num_levels=4)
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "ae.safetensors"))  # no aetk metadata
    got = kl_vae.build_model(cfg(tmp_path, f"model.init_from={tmp_path / 'ae.safetensors'}", "model.preset=flux"))
    for (k, a), b in zip(flux.state_dict().items(), got.vae.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="model.init_from: .* does not match the AutoencoderKL config"):
        kl_vae.build_model(cfg(tmp_path, f"model.init_from={tmp_path / 'ae.safetensors'}", "model.preset=sd"))


def test_a_directory_of_another_layout_than_the_preset_is_refused(tmp_path):
    build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2).save_pretrained(
        tmp_path / "vae")
    with pytest.raises(ConfigError, match=r"is not a sdxl VAE \(latent_channels=2, block_out_channels=\[8, 16\], "
                                          r"layers_per_block=1\); drop model.preset"):
        kl_vae.build_model(cfg(tmp_path, f"model.init_from={tmp_path / 'vae'}", "model.preset=sdxl"))


def test_one_channel_per_norm_group_is_named_with_the_setting_that_fixes_it(tmp_path, caplog):
    # 32 groups on a 32-channel level is instance norm: the photo recipe lost 1.5 dB held-out PSNR to it.
    lone = cfg(tmp_path, "model.block_out_channels=[32,64]", "model.norm_num_groups=32")
    assert "model.norm_num_groups=8 keeps 4 or more" in lone.model.instance_norm_warning()
    with caplog.at_level(logging.WARNING, logger="aetk.train"):
        kl_vae.build_model(lone)
    assert "model.norm_num_groups=32 gives the 32-channel level one channel per group" in caplog.text
    caplog.clear()
    shared = cfg(tmp_path, "model.block_out_channels=[32,64]", "model.norm_num_groups=8")
    assert shared.model.instance_norm_warning() is None
    with caplog.at_level(logging.WARNING, logger="aetk.train"):
        kl_vae.build_model(shared)
        kl_vae.build_model(cfg(tmp_path, "model.preset=sd", "model.block_out_channels=[32,64]",
                               "model.norm_num_groups=32"))  # the preset names its own layout
    assert "norm_num_groups" not in caplog.text
