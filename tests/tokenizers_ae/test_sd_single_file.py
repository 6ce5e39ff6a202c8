"""LDM / SD single-file VAE export: exact round trips, literal LDM key names, and diffusers' own loader offline."""

import itertools
import json
import socket

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tokenizers_ae.export import diffusers_to_ldm_vae, ldm_to_diffusers_vae, load_sd_single_file, save_sd_single_file
from tokenizers_ae.models.kl_vae import build_autoencoder_kl

CONFIGS = [
    dict(block_out_channels=channels, layers_per_block=layers, mid_block_attention=attn, latent_channels=latent)
    for channels, layers, attn, latent in itertools.product(((8, 16), (8, 16, 16)), (1, 2), (True, False), (4, 8))
]


def config_id(cfg: dict) -> str:
    return (f"L{len(cfg['block_out_channels'])}-lpb{cfg['layers_per_block']}"
            f"-{'attn' if cfg['mid_block_attention'] else 'noattn'}-z{cfg['latent_channels']}")


def tiny_vae(seed: int = 0, **cfg) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = build_autoencoder_kl(norm_num_groups=4, sample_size=32, **cfg)
    with torch.no_grad():  # GroupNorm weights start at exactly 1/0: randomise so a swapped norm would show
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.eval()


def num_levels(vae: AutoencoderKL) -> int:
    return len(vae.config.block_out_channels)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE for this test, and any socket connection is an error (proves nothing reached the network)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the env var alone does not reach an imported module
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_diffusers_ldm_diffusers_round_trip_is_exact(cfg):
    vae = tiny_vae(**cfg)
    state = vae.state_dict()
    ldm = diffusers_to_ldm_vae(state, num_levels=num_levels(vae))
    assert len(ldm) == len(state)
    assert_same_state(ldm_to_diffusers_vae(ldm), state)
    # and the LDM side round-trips too, also from a full SD checkpoint's `first_stage_model.` keys
    back = diffusers_to_ldm_vae(ldm_to_diffusers_vae({f"first_stage_model.{k}": v for k, v in ldm.items()}),
                                num_levels=num_levels(vae))
    assert_same_state(back, ldm)


def test_known_ldm_key_names_and_shapes():
    vae = tiny_vae(block_out_channels=(8, 16, 16), layers_per_block=2, mid_block_attention=True, latent_channels=4)
    state = vae.state_dict()
    ldm = diffusers_to_ldm_vae(state, num_levels=3)
    for key in [
        "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.1.conv2.bias",
        "encoder.down.0.downsample.conv.weight", "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.mid.block_1.norm1.weight", "encoder.mid.block_2.conv2.weight", "encoder.mid.attn_1.norm.weight",
        "encoder.mid.attn_1.proj_out.bias", "encoder.norm_out.weight", "quant_conv.weight", "post_quant_conv.bias",
        "decoder.mid.attn_1.k.weight", "decoder.up.2.upsample.conv.weight", "decoder.up.0.block.2.conv1.weight",
        "decoder.up.0.block.0.nin_shortcut.weight", "decoder.norm_out.bias", "decoder.conv_out.weight",
    ]:
        assert key in ldm, key
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)  # Linear (C, C) -> 1x1 conv
    q = state["encoder.mid_block.attentions.0.to_q.weight"]  # (C, C)
    assert torch.equal(ldm["encoder.mid.attn_1.q.weight"][:, :, 0, 0], q)
    # LDM numbers the decoder's levels in reverse: diffusers up_blocks.0 (deepest) is LDM up.{n-1}
    assert torch.equal(ldm["decoder.up.2.block.0.conv1.weight"], state["decoder.up_blocks.0.resnets.0.conv1.weight"])
    assert torch.equal(ldm["decoder.up.0.block.1.norm2.bias"], state["decoder.up_blocks.2.resnets.1.norm2.bias"])
    assert "decoder.up.0.upsample.conv.weight" not in ldm  # the last diffusers up block does not upsample
    assert "encoder.down.2.downsample.conv.weight" not in ldm
    assert not any("up_blocks" in k or "mid_block" in k or "conv_shortcut" in k for k in ldm)

    no_attn = diffusers_to_ldm_vae(tiny_vae(block_out_channels=(8, 16), mid_block_attention=False).state_dict(),
                                   num_levels=2)
    assert not any("attn" in k for k in no_attn)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[-1]], ids=config_id)  # 2 levels + attn; 3 levels, no attn, lpb 2
def test_diffusers_from_single_file_loads_our_export_offline(tmp_path, offline, cfg):
    vae = tiny_vae(**cfg)
    config_dir = tmp_path / "diffusers_vae"
    vae.save_pretrained(config_dir)  # from_single_file reads config.json from here
    path = tmp_path / "vae.safetensors"
    save_sd_single_file(vae, path)

    # Offline needs (diffusers 0.42 single_file_model.py): a local *file* path (anything else is parsed as a hub
    # URL); `config` as a *str* path to a local diffusers directory (a dict raises; config=None infers a hub repo
    # from the keys, here stable-diffusion-v1-5, and fails offline); local_files_only=True. subfolder stays None:
    # the default "vae" subfolder is only applied when config=None.
    loaded = AutoencoderKL.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    assert_same_state(loaded.state_dict(), vae.state_dict())  # also proves no weight was left on the meta device

    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ours, theirs = vae.encode(x).latent_dist, loaded.encode(x).latent_dist
        torch.testing.assert_close(theirs.mean, ours.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.logvar, ours.logvar, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded.decode(ours.mean).sample, vae.decode(ours.mean).sample, atol=1e-5, rtol=0)


def test_load_sd_single_file_from_metadata_dir_or_dict(tmp_path, offline):
    vae = tiny_vae(block_out_channels=(8, 16, 16), layers_per_block=2, mid_block_attention=True, latent_channels=8)
    path = tmp_path / "vae.safetensors"
    save_sd_single_file(vae, path, metadata={"step": "1200"})
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "aetk-sd-vae" and header["version"] == "1" and header["step"] == "1200"
    assert json.loads(header["diffusers_config"])["block_out_channels"] == [8, 16, 16]

    vae.save_pretrained(tmp_path / "cfg")
    for config in (None, tmp_path / "cfg", str(tmp_path / "cfg" / "config.json"), dict(vae.config)):
        loaded = load_sd_single_file(path, config=config)
        assert not loaded.training
        assert_same_state(loaded.state_dict(), vae.state_dict())


def test_load_full_sd_checkpoint_keeps_only_the_vae(tmp_path):
    vae = tiny_vae(block_out_channels=(8, 16), layers_per_block=1, mid_block_attention=True, latent_channels=4)
    ldm = diffusers_to_ldm_vae(vae.state_dict(), num_levels=2)
    full = {f"first_stage_model.{k}": v.contiguous() for k, v in ldm.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 2)  # a UNet weight: ignored
    path = tmp_path / "sd.safetensors"
    save_file(full, str(path))
    assert_same_state(load_sd_single_file(path, config=dict(vae.config)).state_dict(), vae.state_dict())


def test_no_config_anywhere_says_what_to_pass(tmp_path):
    vae = tiny_vae(block_out_channels=(8, 16), layers_per_block=1, mid_block_attention=False, latent_channels=4)
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in diffusers_to_ldm_vae(vae.state_dict(), num_levels=2).items()}, str(path))
    with pytest.raises(ValueError, match="pass config="):
        load_sd_single_file(path)
    with pytest.raises(FileNotFoundError, match="neither a local"):
        load_sd_single_file(path, config="stabilityai/sd-vae-ft-mse")  # a hub id is never fetched


def test_wrong_version_wrong_levels_and_reserved_metadata_are_errors(tmp_path):
    vae = tiny_vae(block_out_channels=(8, 16), layers_per_block=1, mid_block_attention=False, latent_channels=4)
    with pytest.raises(ValueError, match="reserved"):
        save_sd_single_file(vae, tmp_path / "x.safetensors", metadata={"version": "2"})
    path = tmp_path / "v2.safetensors"
    tensors = {k: v.contiguous() for k, v in diffusers_to_ldm_vae(vae.state_dict(), num_levels=2).items()}
    save_file(tensors, str(path), metadata={"format": "aetk-sd-vae", "version": "2"})
    with pytest.raises(ValueError, match="version '2' is not supported"):
        load_sd_single_file(path, config=dict(vae.config))
    three = tiny_vae(block_out_channels=(8, 16, 16), layers_per_block=1, mid_block_attention=False, latent_channels=4)
    save_sd_single_file(three, path)
    with pytest.raises(ValueError, match="3-level VAE but the config describes 2"):
        load_sd_single_file(path, config=dict(vae.config))


def test_missing_key_in_file_is_named(tmp_path):
    vae = tiny_vae(block_out_channels=(8, 16), layers_per_block=2, mid_block_attention=True, latent_channels=4)
    path = tmp_path / "vae.safetensors"
    save_sd_single_file(vae, path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    for missing in ("decoder.up.1.block.1.conv2.weight", "encoder.mid.attn_1.v.weight"):
        broken = {k: v for k, v in tensors.items() if k != missing}
        save_file(broken, str(path), metadata=header)
        with pytest.raises(ValueError, match=rf"missing: .*{missing.replace('.', '[.]')}"):
            load_sd_single_file(path)
    # a model without mid attention given a file with it: the attention weights are named as unexpected
    save_file(tensors, str(path), metadata=header)
    no_attn = dict(vae.config, mid_block_add_attention=False)
    with pytest.raises(ValueError, match=r"unexpected: .*encoder[.]mid[.]attn_1[.]k[.]weight"):
        load_sd_single_file(path, config=no_attn)


def test_unknown_key_is_named_in_both_directions(tmp_path):
    vae = tiny_vae(block_out_channels=(8, 16), layers_per_block=1, mid_block_attention=True, latent_channels=4)
    state = dict(vae.state_dict(), **{"encoder.extra_head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"encoder[.]extra_head[.]weight"):
        diffusers_to_ldm_vae(state, num_levels=2)
    with pytest.raises(ValueError, match=r"decoder[.]up_blocks[.]1"):  # an index beyond num_levels is not mapped
        diffusers_to_ldm_vae(vae.state_dict(), num_levels=1)

    ldm = diffusers_to_ldm_vae(vae.state_dict(), num_levels=2)
    for extra in ("loss.logvar", "encoder.down.0.block.0.norm3.weight", "decoder.mid.attn_1.qkv.weight"):
        with pytest.raises(ValueError, match=extra.replace(".", "[.]")):
            ldm_to_diffusers_vae(dict(ldm, **{extra: torch.zeros(1)}))
    path = tmp_path / "vae.safetensors"
    save_file({**{k: v.contiguous() for k, v in ldm.items()}, "model_ema.decay": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match=r"model_ema[.]decay"):
        load_sd_single_file(path, config=dict(vae.config))
