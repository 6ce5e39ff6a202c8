"""The architectures of the released KL-VAEs people fine-tune, as diffusers `AutoencoderKL` configs.

The numbers are those of the published `vae/config.json` files (Stable Diffusion 1.x/2.x, SDXL, SD3,
FLUX.1): an architecture built from a preset with random weights takes the released weights strictly,
key for key and shape for shape, whether from a diffusers directory or an SD-layout single file.
The 16-channel layouts (SD3, FLUX) have no quant convs and normalise latents with a shift and a scale,
`(z - shift_factor) * scaling_factor`; the 4-channel ones with the scale alone.
"""

from __future__ import annotations

from diffusers import AutoencoderKL

_SD_LIKE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    act_fn="silu", norm_num_groups=32)

PRESETS: dict[str, dict] = {
    "sd": {**_SD_LIKE, "latent_channels": 4, "sample_size": 512, "scaling_factor": 0.18215},
    "sdxl": {**_SD_LIKE, "latent_channels": 4, "sample_size": 1024, "scaling_factor": 0.13025,
             "force_upcast": True},
    "sd3": {**_SD_LIKE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305,
            "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False},
    "flux": {**_SD_LIKE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 0.3611,
             "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False},
}
"""Preset name -> AutoencoderKL config (SD 1.x and 2.x share `sd`)."""


def preset_config(name: str) -> dict:
    """A copy of the preset's config; ValueError naming the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def build_preset(name: str) -> AutoencoderKL:
    """A released architecture with random weights (load the released ones into it)."""
    return AutoencoderKL.from_config(preset_config(name))
