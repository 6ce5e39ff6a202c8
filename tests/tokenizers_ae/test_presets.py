"""Released VAE layouts (SD, SDXL, SD3, FLUX) built with random weights; a third-party SD-layout single
file of each imports strictly, and a file of another layout is refused naming the keys."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tokenizers_ae.export.sd_single_file import diffusers_to_ldm_vae, load_sd_single_file
from tokenizers_ae.models.presets import PRESETS, build_preset, preset_config


def third_party_file(vae, path):
    """An SD-layout single file as other tools write it: LDM key names, fp16, no aetk metadata."""
    ldm = diffusers_to_ldm_vae(vae.state_dict(), num_levels=4)
    save_file({k: v.half().contiguous() for k, v in ldm.items()}, str(path))


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_single_file_of_each_layout_imports_exactly(name, tmp_path):
    torch.manual_seed(0)
    vae = build_preset(name)
    assert vae.config.latent_channels == (16 if name in ("sd3", "flux") else 4)
    assert (vae.quant_conv is None) == (name in ("sd3", "flux"))
    third_party_file(vae, tmp_path / "vae.safetensors")
    loaded = load_sd_single_file(tmp_path / "vae.safetensors", config=preset_config(name))
    mine, theirs = vae.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k].half().float(), theirs[k]), k
    assert loaded.config.scaling_factor == PRESETS[name]["scaling_factor"]
    assert loaded.config.shift_factor == PRESETS[name].get("shift_factor")


def test_a_file_of_another_layout_is_refused_naming_keys(tmp_path):
    third_party_file(build_preset("flux"), tmp_path / "flux.safetensors")
    with pytest.raises(ValueError, match="missing: .*quant_conv"):
        load_sd_single_file(tmp_path / "flux.safetensors", config=preset_config("sd"))
    with pytest.raises(ValueError, match="unknown VAE preset 'sd4'; one of sd, sdxl, sd3, flux"):
        preset_config("sd4")
