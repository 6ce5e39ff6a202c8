"""VQ-VAE / VQ-GAN through the one trainer: trains end to end, exports to diffusers VQModel exactly,
and explains why FSQ/LFQ cannot be a VQModel."""

import json

import pytest
import torch
from diffusers import VQModel

from train.run import train

VQ = ["model.kind=vq_vae", "model.latent_channels=4", "model.codebook_size=64", "model.kmeans_init=true",
      "model.dead_code_threshold=0.01", "loss.disc_start=2", "train.max_steps=4", "train.eval_every=4",
      "train.checkpoint_every=4"]


def test_tiny_vqgan_trains_and_exports_to_vqmodel_exactly(tmp_path, tiny_config):
    trainer = train(tiny_config(tmp_path / "run", *VQ))
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
    trainer.close()


@pytest.mark.parametrize("quantizer,extra", [("fsq", ["model.fsq_levels=[5,5,3]", "model.latent_channels=3"]),
                                             ("lfq", ["model.lfq_bits=4", "model.latent_channels=4"])])
def test_fsq_and_lfq_train_and_export_natively_with_a_reason(tmp_path, tiny_config, caplog, quantizer, extra):
    trainer = train(tiny_config(tmp_path / "run", *VQ, f"model.quantizer={quantizer}", *extra))
    assert (tmp_path / "run/model/model.safetensors").is_file()
    meta = json.loads((tmp_path / "run/model/aetk_model.json").read_text())
    assert meta["format"] == "aetk-model" and meta["recipe"]["quantizer"] == quantizer
    assert any("no codebook" in r.getMessage() for r in caplog.records)
    trainer.close()


def test_unknown_regulariser_weight_is_an_error():
    from train.tasks import AutoencoderGANTask
    from tokenizers_ae.losses.reconstruction import ReconstructionLoss
    from tokenizers_ae.models.output import AEOutput

    class M(torch.nn.Module):
        def forward(self, x, noise=None):
            return AEOutput(recon=x, latent=x, reg={"mystery": x.mean()})

    task = AutoencoderGANTask(autoencoder=M(), rec_loss=ReconstructionLoss(), discriminator=None,
                              reg_weights={"kl": 1.0}, lr=1e-3)
    with pytest.raises(KeyError, match="mystery"):
        task._regularisers(M()(torch.zeros(1, 3, 4, 4)))
