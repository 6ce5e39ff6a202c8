"""Export trained tokenizers to the file formats other tools load."""

from tokenizers_ae.export.sd_single_file import (
    diffusers_to_ldm_vae,
    ldm_to_diffusers_vae,
    load_sd_single_file,
    save_sd_single_file,
)

__all__ = ["diffusers_to_ldm_vae", "ldm_to_diffusers_vae", "load_sd_single_file", "save_sd_single_file"]
