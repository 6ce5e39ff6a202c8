"""aetk export / import: the diffusers directory and SD single file hold the toolkit's model."""

import json

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from aetk.cli import main
from tokenizers_ae.models.kl_vae import KLVAE
from tokenizers_ae.pretrained import LoadError
from train.families.kl_vae import SD_DEFAULT_SCALING
from train.run import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from helpers import tiny_overrides

    from train.recipe import config_from_dict

    out = tmp_path_factory.mktemp("run")
    trainer = train(config_from_dict({}, tiny_overrides(out, "train.max_steps=3", "train.eval_every=3")))
    yield out, trainer
    trainer.close()


def batch():
    torch.manual_seed(0)
    return torch.rand(2, 3, 16, 16) * 2 - 1


def test_training_writes_a_measured_scaling_factor(trained):
    run, _ = trained
    stats = json.loads((run / "model/latent_stats.json").read_text())
    cfg = json.loads((run / "model/config.json").read_text())
    assert cfg["scaling_factor"] == pytest.approx(stats["scaling_factor"])
    assert cfg["scaling_factor"] != pytest.approx(SD_DEFAULT_SCALING)
    assert stats["scaling_factor"] == pytest.approx(1 / stats["global_std"])
    assert len(stats["mean"]) == 2 and stats["n"] == 64  # tiny: 2 latent channels, 64 built-in crops
    # fp16 safety recorded where diffusers pipelines look for it.
    assert stats["fp16_safe"] is True and cfg["force_upcast"] is False


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_export_diffusers_reconstructs_like_the_toolkit_model(trained, tmp_path, weights):
    run, trainer = trained
    out = tmp_path / "vae"
    assert main(["export", str(run), "--format", "diffusers", "--out", str(out), "--weights", weights]) == 0
    vae = AutoencoderKL.from_pretrained(out)
    ours = trainer.averaged_model() if weights == "ema" else trainer.task.generator.autoencoder
    ours.eval()
    x = batch()
    with torch.no_grad():
        expected = ours(x).recon
        got = vae(x, sample_posterior=False).sample
    ours.train()
    assert (got - expected).abs().max() < 1e-5
    assert vae.config.scaling_factor == pytest.approx(
        json.loads((run / "model/config.json").read_text())["scaling_factor"])


def test_export_sd_single_file_then_import_and_fine_tune(trained, tmp_path, tiny_config):
    run, trainer = trained
    path = tmp_path / "vae.safetensors"
    assert main(["export", str(run), "--format", "sd-single-file", "--out", str(path)]) == 0
    keys = load_file(path).keys()
    assert "encoder.down.0.block.0.norm1.weight" in keys and "decoder.up.1.upsample.conv.weight" in keys
    # Back to diffusers with `aetk import`, and directly as a fine-tuning start.
    assert main(["import", str(path), "--out", str(tmp_path / "imported")]) == 0
    imported = AutoencoderKL.from_pretrained(tmp_path / "imported")
    ema = trainer.averaged_model().vae
    for (n, a), b in zip(ema.named_parameters(), imported.parameters()):
        assert torch.equal(a.detach(), b), n
    from train.loop import Trainer

    t = Trainer(tiny_config(tmp_path / "ft", f"model.init_from={path}"))
    for (n, a), b in zip(ema.named_parameters(), t.task.generator.autoencoder.vae.parameters()):
        assert torch.equal(a.detach(), b.detach()), n
    t.close()


def test_export_measures_scaling_on_data_or_takes_it_explicitly(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "m"
    assert main(["export", str(run), "--out", str(out), "--data", "builtin:skimage", "--resolution", "16",
                 "--n", "32"]) == 0
    assert "measured scale (scaling_factor " in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--scaling-factor", "0.5"]) == 0
    assert AutoencoderKL.from_pretrained(tmp_path / "x").config.scaling_factor == 0.5


def test_loading_rejects_unknown_sources(tmp_path):
    with pytest.raises(LoadError, match="not a run directory"):
        KLVAE.from_pretrained(tmp_path)
