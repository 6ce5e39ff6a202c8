"""A diffusers `AutoencoderKL` <-> one `.safetensors` file with the original latent-diffusion VAE key names.

That file is what "single-file" tools load (ComfyUI, A1111, diffusers' own `AutoencoderKL.from_single_file`).
Key correspondence (diffusers -> LDM; `n` = number of levels = len(block_out_channels)):

    {enc,dec}oder.conv_in / conv_out, quant_conv, post_quant_conv  -> same name
    {enc,dec}oder.conv_norm_out                                    -> {enc,dec}oder.norm_out
    encoder.down_blocks.i.resnets.j.*                              -> encoder.down.i.block.j.*
    encoder.down_blocks.i.downsamplers.0.conv                      -> encoder.down.i.downsample.conv
    decoder.up_blocks.i.resnets.j.*                                -> decoder.up.{n-1-i}.block.j.*   (reversed)
    decoder.up_blocks.i.upsamplers.0.conv                          -> decoder.up.{n-1-i}.upsample.conv
    {enc,dec}oder.mid_block.resnets.j.*                            -> {enc,dec}oder.mid.block_{j+1}.*
    resnet conv_shortcut                                           -> nin_shortcut
    {enc,dec}oder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
                                                                   -> {enc,dec}oder.mid.attn_1.{norm,q,k,v,proj_out}
    attention q/k/v/out weights: Linear (C, C)                     -> 1x1 conv (C, C, 1, 1)

The export direction is written here (the reverse of diffusers' `convert_ldm_vae_checkpoint`, as in diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py` but for any number of levels and layers); the import
direction reuses diffusers' own `convert_ldm_vae_checkpoint`, checked so that no weight is silently dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FILE_FORMAT = "aetk-sd-vae"
FILE_VERSION = "1"
CONFIG_METADATA_KEY = "diffusers_config"
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")  # full SD checkpoints; the same prefixes diffusers accepts

_SAME_NAME = frozenset(
    f"{module}.{wb}"
    for module in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                   "quant_conv", "post_quant_conv")
    for wb in ("weight", "bias")
)
_RESNET = r"(?P<param>norm1|conv1|norm2|conv2|conv_shortcut)\.(?P<wb>weight|bias)"
_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

_NORM_OUT = re.compile(r"(?P<side>encoder|decoder)\.conv_norm_out\.(?P<wb>weight|bias)")
_DOWN_RESNET = re.compile(rf"encoder\.down_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\.{_RESNET}")
_DOWNSAMPLE = re.compile(r"encoder\.down_blocks\.(?P<i>\d+)\.downsamplers\.0\.conv\.(?P<wb>weight|bias)")
_UP_RESNET = re.compile(rf"decoder\.up_blocks\.(?P<i>\d+)\.resnets\.(?P<j>\d+)\.{_RESNET}")
_UPSAMPLE = re.compile(r"decoder\.up_blocks\.(?P<i>\d+)\.upsamplers\.0\.conv\.(?P<wb>weight|bias)")
_MID_RESNET = re.compile(rf"(?P<side>encoder|decoder)\.mid_block\.resnets\.(?P<j>[01])\.{_RESNET}")
_MID_ATTN = re.compile(
    r"(?P<side>encoder|decoder)\.mid_block\.attentions\.0\.(?P<part>group_norm|to_q|to_k|to_v|to_out\.0)"
    r"\.(?P<wb>weight|bias)"
)
_LDM_ATTN_CONV = re.compile(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight")
_LDM_LEVEL = re.compile(r"(?:encoder\.down|decoder\.up)\.(\d+)\.")


def _resnet_param(param: str) -> str:
    return "nin_shortcut" if param == "conv_shortcut" else param


def _to_ldm_key(key: str, num_levels: int) -> str | None:
    """One diffusers AutoencoderKL key -> its LDM name, or None if it is not a key of an n-level model."""
    if key in _SAME_NAME:
        return key
    if m := _NORM_OUT.fullmatch(key):
        return f"{m['side']}.norm_out.{m['wb']}"
    if (m := _DOWN_RESNET.fullmatch(key)) and int(m["i"]) < num_levels:
        return f"encoder.down.{m['i']}.block.{m['j']}.{_resnet_param(m['param'])}.{m['wb']}"
    if (m := _DOWNSAMPLE.fullmatch(key)) and int(m["i"]) < num_levels:
        return f"encoder.down.{m['i']}.downsample.conv.{m['wb']}"
    if (m := _UP_RESNET.fullmatch(key)) and int(m["i"]) < num_levels:
        return f"decoder.up.{num_levels - 1 - int(m['i'])}.block.{m['j']}.{_resnet_param(m['param'])}.{m['wb']}"
    if (m := _UPSAMPLE.fullmatch(key)) and int(m["i"]) < num_levels:
        return f"decoder.up.{num_levels - 1 - int(m['i'])}.upsample.conv.{m['wb']}"
    if m := _MID_RESNET.fullmatch(key):
        return f"{m['side']}.mid.block_{int(m['j']) + 1}.{_resnet_param(m['param'])}.{m['wb']}"
    if m := _MID_ATTN.fullmatch(key):
        return f"{m['side']}.mid.attn_1.{_ATTN_TO_LDM[m['part']]}.{m['wb']}"
    return None


def _format_keys(keys: list[str] | set[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def diffusers_to_ldm_vae(state_dict: Mapping[str, torch.Tensor], *, num_levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict -> the same tensors under LDM / SD VAE key names.

    `num_levels` = len(config.block_out_channels) (needed because LDM numbers the decoder's levels in reverse).
    Attention q/k/v/proj_out weights become (C, C, 1, 1) views; every other tensor is passed through as is.
    Raises ValueError naming every key that has no LDM name (nothing is dropped silently).
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    out: dict[str, torch.Tensor] = {}
    leftover: list[str] = []
    for key, tensor in state_dict.items():
        ldm_key = _to_ldm_key(key, num_levels)
        if ldm_key is None:
            leftover.append(key)
            continue
        if _LDM_ATTN_CONV.fullmatch(ldm_key):
            if tensor.ndim != 2:
                raise ValueError(f"{key}: expected a Linear weight (C, C), got shape {tuple(tensor.shape)}")
            tensor = tensor[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
        out[ldm_key] = tensor
    if leftover:
        raise ValueError(
            f"{len(leftover)} key(s) have no LDM VAE name for a {num_levels}-level AutoencoderKL "
            f"(wrong num_levels, or not an AutoencoderKL state dict?): {_format_keys(leftover)}"
        )
    return out


def _strip_vae_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the VAE of a full SD checkpoint (`first_stage_model.` / `vae.` keys), prefix removed."""
    for prefix in LDM_VAE_PREFIXES:
        if any(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: t for key, t in state_dict.items() if key.startswith(prefix)}
    return dict(state_dict)


def _count_levels(ldm_state_dict: Mapping[str, torch.Tensor]) -> int:
    levels = [int(m[1]) for key in ldm_state_dict if (m := _LDM_LEVEL.match(key))]
    if not levels:
        raise ValueError("no `encoder.down.<i>.` / `decoder.up.<i>.` keys: this is not an LDM / SD VAE state dict")
    return max(levels) + 1


def ldm_to_diffusers_vae(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An LDM / SD VAE state dict (bare, or a full SD checkpoint with `first_stage_model.` keys) -> diffusers names.

    Uses diffusers' `convert_ldm_vae_checkpoint` (the number of levels is read from the keys), then checks that
    every input VAE key was used: unknown keys raise ValueError naming them (the diffusers function ignores them).
    Missing keys cannot be detected without a config; `load_sd_single_file` reports those.
    """
    ldm = _strip_vae_prefix(state_dict)
    num_levels = _count_levels(ldm)
    config = {"down_block_types": ["DownEncoderBlock2D"] * num_levels,
              "up_block_types": ["UpDecoderBlock2D"] * num_levels}
    out = convert_ldm_vae_checkpoint(ldm, config)

    incomplete = [key for key, t in out.items() if t is None]  # e.g. a downsample weight without its bias
    if incomplete:
        names = [_to_ldm_key(k, num_levels) or k for k in incomplete]
        raise ValueError(f"LDM VAE state dict is missing: {_format_keys(names)}")
    # An input key is accounted for iff some output key maps back to exactly it.
    unused = set(ldm) - {_to_ldm_key(key, num_levels) for key in out}
    if unused:
        raise ValueError(
            f"{len(unused)} key(s) are not weights of an LDM / SD VAE with {num_levels} levels "
            f"(an extra or misspelt key?): {_format_keys(unused)}"
        )
    unmapped = [key for key in out if _to_ldm_key(key, num_levels) is None]
    if unmapped:  # diffusers' substring matching misfired (e.g. on >= 10 levels): refuse rather than guess
        raise ValueError(f"diffusers' converter produced keys that do not round-trip: {_format_keys(unmapped)}")
    return out


def save_sd_single_file(vae: AutoencoderKL, path: str | os.PathLike, *, metadata: dict[str, str] | None = None) -> None:
    """Write `vae` as one LDM-named .safetensors file, with its diffusers config in the metadata.

    Metadata: format "aetk-sd-vae", version "1", "diffusers_config" (JSON) and any extra str -> str `metadata`.
    Tensors are written in their current dtype, on CPU.
    """
    extra = dict(metadata or {})
    reserved = {"format", "version", CONFIG_METADATA_KEY} & extra.keys()
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved by the {FILE_FORMAT} format")
    bad = [k for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"safetensors metadata must map str -> str; bad entries: {bad}")
    num_levels = len(vae.config.block_out_channels)
    ldm = diffusers_to_ldm_vae(vae.state_dict(), num_levels=num_levels)
    tensors = {key: t.detach().cpu().contiguous() for key, t in ldm.items()}
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, CONFIG_METADATA_KEY: vae.to_json_string(), **extra}
    save_file(tensors, os.fspath(path), metadata=header)


def _read_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL config: a dict, a local model directory, or a local config.json (never a hub id)."""
    if isinstance(config, Mapping):
        return dict(config)
    path = os.fspath(config)
    if os.path.isdir(path):
        return dict(AutoencoderKL.load_config(path, local_files_only=True))
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    raise FileNotFoundError(f"config={path!r} is neither a local diffusers AutoencoderKL directory nor a config.json")


def load_sd_single_file(
    path: str | os.PathLike, *, config: str | os.PathLike | Mapping[str, Any] | None = None
) -> AutoencoderKL:
    """Read an LDM / SD VAE .safetensors file (ours or any single-file VAE / full SD checkpoint) into AutoencoderKL.

    `config`: a local diffusers AutoencoderKL directory, a config.json path, or a config dict; if None, the
    config saved in the file's metadata by `save_sd_single_file` is used. Loads strictly (a missing or unexpected
    key is a ValueError naming its LDM name) into float32 parameters; returns the model in eval mode.
    """
    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") == FILE_FORMAT and header.get("version") != FILE_VERSION:
        raise ValueError(
            f"{path}: {FILE_FORMAT} version {header.get('version')!r} is not supported "
            f"(this aetk reads version {FILE_VERSION})"
        )
    if config is None:
        if CONFIG_METADATA_KEY not in header:
            raise ValueError(
                f"{path} carries no diffusers config in its metadata (not written by save_sd_single_file); pass "
                "config=<local diffusers AutoencoderKL directory, its config.json, or a config dict> "
                "describing the architecture (block_out_channels, layers_per_block, latent_channels, ...)"
            )
        model_config = json.loads(header[CONFIG_METADATA_KEY])
    else:
        model_config = _read_config(config)

    vae = AutoencoderKL.from_config(model_config)
    num_levels = len(vae.config.block_out_channels)
    ldm = _strip_vae_prefix(load_file(path))
    file_levels = _count_levels(ldm)
    if file_levels != num_levels:
        raise ValueError(f"{path} holds a {file_levels}-level VAE but the config describes {num_levels} levels")
    state_dict = ldm_to_diffusers_vae(ldm)

    expected = vae.state_dict().keys()
    missing = expected - state_dict.keys()
    unexpected = state_dict.keys() - expected
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing: {_format_keys({_to_ldm_key(k, num_levels) or k for k in missing})}")
        if unexpected:
            problems.append(f"unexpected: {_format_keys({_to_ldm_key(k, num_levels) or k for k in unexpected})}")
        raise ValueError(f"{path} does not match the AutoencoderKL config; " + "; ".join(problems))
    vae.load_state_dict(state_dict, strict=True)  # size mismatches raise here, naming the diffusers key
    return vae.eval()
