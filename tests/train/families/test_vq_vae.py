"""VQ-VAE / VQ-GAN through the one trainer: trains end to end, exports to diffusers VQModel exactly,
and explains why FSQ/LFQ cannot be a VQModel."""

import json
import logging

import pytest
import torch
from diffusers import VQModel
from helpers import tiny_overrides

from train.families import vq_vae
from train.recipe import config_from_dict
from train.run import train

VQ = ["model.kind=vq_vae", "model.latent_channels=4", "model.quantizer.codebook_size=64",
      "model.quantizer.kmeans_init=true", "model.quantizer.dead_code_threshold=0.01", "loss.disc_start=2",
      "train.max_steps=4", "train.eval_every=4",
      "train.checkpoint_every=4"]


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    trainer = train(config_from_dict({}, tiny_overrides(out / "run", *VQ)))
    yield out, trainer
    trainer.close()


def test_tiny_vqgan_trains_and_exports_to_vqmodel_exactly(vq_run):
    tmp_path, trainer = vq_run
    rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "generator/loss" in r]
    assert all("vq/usage" in r and "vq/perplexity" in r and "reg/vq/commitment" in r for r in train_rows)
    assert all("disc/loss" in r for r in train_rows[2:])  # the GAN phase ran
    model = trainer.averaged_model().eval()
    live = trainer.task.generator.autoencoder
    assert torch.equal(model.quantizer.codebook, live.quantizer.codebook)  # EMA model carries the codebook
    vq = VQModel.from_pretrained(tmp_path / "run/model")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ours, theirs = model(x).recon, vq(x).sample
        tokens = model.encode(x).indices
        _, _, (_, _, ref_idx) = vq.quantize(vq.encode(x).latents)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.equal(tokens.flatten(), ref_idx.flatten())
    torch.testing.assert_close(model.decode_indices(tokens), ours)


@pytest.mark.parametrize("source", ["run", "run/model"])
def test_encode_writes_token_shards_with_codebook_statistics(vq_run, tmp_path, source):
    from aetk.cli import main
    from latent_diffusion.shards import LatentShardDataset
    from tokenizers_ae.data.sources import build_image_dataset

    run, trainer = vq_run
    out = tmp_path / "tok"
    assert main(["encode", str(run / source), "--data", "builtin:skimage", "--resolution", "16", "--out", str(out),
                 "--shard-size", "16", "--precision", "no"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "aetk-tokens" and m["count"] == 512 and m["token_shape"] == [8, 8]
    assert m["codebook_size"] == 64 and m["dtype"] == "int16"
    ds = LatentShardDataset(out)
    src = build_image_dataset("builtin:skimage", resolution=16, random_crop=False, random_flip=False)
    model = trainer.averaged_model().eval()
    items = [ds[i] for i in range(0, 512, 37)]
    with torch.no_grad():
        ref = model.encode(torch.stack([src[it["index"]]["x"] for it in items])).indices
    assert torch.equal(torch.stack([it["tokens"] for it in items]), ref)
    all_tokens = torch.stack([ds[i]["tokens"] for i in range(len(ds))])
    counts = torch.bincount(all_tokens.flatten(), minlength=64)
    assert m["dead_codes"] == int((counts == 0).sum())
    assert m["codebook_usage"] == pytest.approx(float((counts > 0).double().mean()))


def test_eval_reports_codebook_usage_and_token_rate(vq_run, tmp_path):
    from aetk.cli import main

    run, _ = vq_run
    assert main(["eval", str(run / "run"), "--data", "builtin:skimage", "--resolution", "16", "--n", "8",
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    cb = r["codebook"]
    assert cb["codebook_size"] == 64 and cb["token_shape"] == [8, 8] and 0 < cb["codebook_usage"] <= 1
    assert 1 <= cb["perplexity"] <= 64 and cb["dead_codes"] == round(64 * (1 - cb["codebook_usage"]))
    assert r["model"]["bpp"] == pytest.approx(64 * 6 / 256)  # 8x8 tokens x log2(64) bits over 16x16 px


@pytest.mark.parametrize("quantizer,extra", [("fsq", ["model.quantizer.fsq_levels=[5,5,3]", "model.latent_channels=3"]),
                                             ("lfq", ["model.quantizer.lfq_bits=4", "model.latent_channels=4"])])
def test_fsq_and_lfq_train_and_export_natively_with_a_reason(tmp_path, tiny_config, caplog, quantizer, extra):
    trainer = train(tiny_config(tmp_path / "run", *VQ, f"model.quantizer.type={quantizer}", *extra))
    assert (tmp_path / "run/model/model.safetensors").is_file()
    meta = json.loads((tmp_path / "run/model/aetk_model.json").read_text())
    assert meta["format"] == "aetk-model" and meta["config"]["quantizer"]["class"] == quantizer.upper()
    assert any("no codebook" in r.getMessage() for r in caplog.records)
    trainer.close()


def test_unknown_regulariser_weight_is_an_error():
    from tokenizers_ae.losses.reconstruction import ReconstructionLoss
    from tokenizers_ae.models.output import AEOutput
    from train.tasks import AutoencoderGANTask

    class M(torch.nn.Module):
        def forward(self, x, noise=None):
            return AEOutput(recon=x, latent=x, reg={"mystery": x.mean()})

    task = AutoencoderGANTask(autoencoder=M(), rec_loss=ReconstructionLoss(), discriminator=None,
                              reg_weights={"kl": 1.0}, lr=1e-3)
    with pytest.raises(KeyError, match="mystery"):
        task._regularisers(M()(torch.zeros(1, 3, 4, 4)))


def test_export_cli_for_vq_and_fsq(vq_run, tmp_path, tiny_config):
    from aetk.cli import main
    from tokenizers_ae.models.vq_vae import VQVAE
    from train.families.vq_vae import build_model

    run, trainer = vq_run
    assert main(["export", str(run / "run"), "--out", str(tmp_path / "vq")]) == 0
    vq = VQModel.from_pretrained(tmp_path / "vq")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert (vq(x).sample - trainer.averaged_model().eval()(x).recon).abs().max() < 1e-5
    # FSQ has no codebook: native format, loadable again by aetk.
    fsq = build_model(tiny_config(tmp_path / "f", *VQ, "model.quantizer.type=fsq", "model.quantizer.fsq_levels=[5,5,3]",
                                  "model.latent_channels=3")).eval()
    fsq.save_pretrained(tmp_path / "fsq")
    assert (tmp_path / "fsq/aetk_model.json").is_file()  # no VQModel holds FSQ: aetk's native format
    back = VQVAE.from_pretrained(tmp_path / "fsq")
    with torch.no_grad():
        torch.testing.assert_close(back(x).recon, fsq(x).recon)


def test_one_channel_per_norm_group_is_warned_when_the_vq_backbone_is_built(tmp_path, caplog):
    def build(groups: int) -> str:
        caplog.clear()
        cfg = config_from_dict({}, tiny_overrides(tmp_path / "run", *VQ, "model.block_out_channels=[16,32]",
                                                  f"model.norm_num_groups={groups}"))
        with caplog.at_level(logging.WARNING, logger="aetk.train"):
            vq_vae.build_model(cfg)
        return caplog.text

    lone = build(16)
    assert "model.norm_num_groups=16 gives the 16-channel level one channel per group" in lone
    assert "model.norm_num_groups=4 keeps 4 or more" in lone
    assert "norm_num_groups" not in build(4)
