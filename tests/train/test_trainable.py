"""`train.trainable`: a decoder-only fine-tune keeps the latents bit-identical (the frozen half has no
gradient, optimizer state or EMA of its own), an encoder-only one keeps the decoder, and a model that
cannot be split is refused with one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_overrides

from aetk.cli import main
from tokenizers_ae.models.kl_vae import KLVAE, build_autoencoder_kl
from train.config import ConfigError
from train.loop import Trainer
from train.recipe import config_from_dict
from train.run import train

ARCH = ["model.block_out_channels=[8,16]", "model.norm_num_groups=4", "model.latent_channels=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A released model to fine-tune: a diffusers AutoencoderKL directory."""
    torch.manual_seed(7)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2,
                               mid_block_attention=False)
    out = tmp_path_factory.mktemp("released") / "vae"
    vae.save_pretrained(out)
    return out


def cfg(out, source, *extra):
    # GAN on from step 3 (the adaptive weight reads the decoder's last layer), EMA on (tiny_overrides).
    return config_from_dict({}, tiny_overrides(out, f"model.init_from={source}", *ARCH, "train.mixed_precision=no",
                                               "train.max_steps=4", "train.checkpoint_every=2", *extra))


def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_decoder_only_keeps_latents_bit_identical_and_resumes_exactly(tmp_path, source):
    trainer = train(cfg(tmp_path / "run", source, "train.trainable=decoder"))
    trained = {id(p) for g in trainer.optimizers["generator"].param_groups for p in g["params"]}
    model = trainer.task.model_to_average()
    assert trained == {id(p) for m in model.trainable_parts()["decoder"] for p in m.parameters()}
    trainer.close()

    # The model card the export writes: how to load it, its measured normalisation, what it was tuned from.
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers") and "AutoencoderKL.from_pretrained(\"model\")" in card
    assert "- `scaling_factor`: " in card and "trainable: decoder" in card and f"fine-tuned from `{source}`" in card
    assert "## Evaluation (step 4" in card and "| psnr |" in card and "aetk eval " in card

    original = KLVAE.from_pretrained(source).eval()
    tuned = KLVAE.from_pretrained(tmp_path / "run" / "model").eval()  # the EMA export
    with torch.no_grad():
        x = images()
        assert torch.equal(tuned.encode_moments(x)[0], original.encode_moments(x)[0])
        assert torch.equal(tuned.encode_moments(x)[1], original.encode_moments(x)[1])
    for (name, a), b in zip(original.vae.encoder.state_dict().items(), tuned.vae.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(original.vae.decoder.conv_out.weight, tuned.vae.decoder.conv_out.weight)

    # aetk eval --compare: no drift at all; both decoders measured on the original's latents.
    report = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "run" / "model"), "--data", "builtin:skimage", "--resolution", "16", "--n",
                 "8", "--compare", str(source), "--json", str(report), "--out-dir", str(tmp_path / "out")]) == 0
    cmp = json.loads(report.read_text())["compare"]
    assert cmp["latent_drift"]["identical"] and cmp["latent_drift"]["relative_per_channel"] == [0.0, 0.0]
    dec = cmp["original_latents"]
    assert dec["original_decoder"]["psnr"] != dec["tuned_decoder"]["psnr"] and cmp["n"] == 8
    assert cmp["figure"] == str(tmp_path / "out" / "compare.png")
    assert open(cmp["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # Resume from the middle checkpoint (frozen tensors shared by the EMA) = the straight run.
    half = tmp_path / "half"
    train(cfg(half, source, "train.trainable=decoder", "train.max_steps=2")).close()
    train(cfg(half, source, "train.trainable=decoder")).close()
    resumed = KLVAE.from_pretrained(half / "model")
    for (name, a), b in zip(tuned.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_encoder_only_keeps_the_decoder(tmp_path, source):
    train(cfg(tmp_path / "run", source, "train.trainable=encoder", "loss.disc_start=100")).close()
    original = KLVAE.from_pretrained(source)
    tuned = KLVAE.from_pretrained(tmp_path / "run" / "model")
    report = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "run" / "model"), "--data", "builtin:skimage", "--resolution", "16", "--n",
                 "8", "--compare", str(source), "--json", str(report), "--out-dir", str(tmp_path / "out")]) == 0
    drift = json.loads(report.read_text())["compare"]["latent_drift"]
    assert not drift["identical"] and all(r > 0 for r in drift["relative_per_channel"])
    for (name, a), b in zip(original.vae.decoder.state_dict().items(), tuned.vae.decoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(original.vae.encoder.conv_in.weight, tuned.vae.encoder.conv_in.weight)


def test_a_model_without_halves_is_refused(tmp_path):
    c = config_from_dict({}, tiny_overrides(tmp_path / "run", "model.kind=vq_vae", "train.trainable=decoder"))
    with pytest.raises(ConfigError, match="train.trainable=decoder: a VQVAE has no encoder/decoder split"):
        Trainer(c)


def test_encoder_only_with_the_adaptive_gan_weight_is_refused(tmp_path, source):
    with pytest.raises(ConfigError, match="train.trainable=encoder with a GAN"):
        cfg(tmp_path / "run", source, "train.trainable=encoder")


def test_freezing_half_of_a_random_model_is_refused(tmp_path):
    c = config_from_dict({}, tiny_overrides(tmp_path / "run", "train.trainable=decoder"))
    with pytest.raises(ConfigError, match="train.trainable=decoder fine-tunes a released model: set model.init_from"):
        Trainer(c)


def test_a_video_vae_decoder_only_fine_tune_keeps_its_latents(tmp_path):
    from diffusers import AutoencoderKLWan

    from tokenizers_ae.models.video_vae import VideoVAE, build_autoencoder_kl_wan

    torch.manual_seed(3)
    build_autoencoder_kl_wan(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), temporal_downsample=(True, True)).save_pretrained(
        tmp_path / "wan")
    c = config_from_dict({}, tiny_overrides(tmp_path / "run", "model.kind=video_vae", "train.trainable=decoder",
                                            f"model.init_from={tmp_path / 'wan'}", "train.max_steps=2",
                                            "loss.disc_start=100", "train.mixed_precision=no"))
    train(c).close()
    original = AutoencoderKLWan.from_pretrained(tmp_path / "wan")
    tuned = VideoVAE.from_pretrained(tmp_path / "run" / "model").vae
    for (k, a), b in zip(original.encoder.state_dict().items(), tuned.encoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(original.decoder.conv_out.weight, tuned.decoder.conv_out.weight)
