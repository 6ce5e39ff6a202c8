"""Diffusion prior over encoded latents, trained by the one trainer; deterministic sampling."""

import json

import pytest
import torch

from aetk.cli import main
from latent_diffusion.diffusion_prior import DiffusionPrior, build_unet, sample


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    root = tmp_path_factory.mktemp("ld")
    torch.manual_seed(0)
    build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4).save_pretrained(root / "vae")
    assert main(["encode", str(root / "vae"), "--data", "builtin:skimage", "--resolution", "16", "--out",
                 str(root / "lat"), "--shard-size", "64", "--precision", "no"]) == 0
    return root


def test_scaling_is_applied_to_training_items_and_inverted(latents):
    from latent_diffusion.shards import LatentShardDataset
    from train.data.shards import LatentItems

    raw, items = LatentShardDataset(latents / "lat"), LatentItems(str(latents / "lat"))
    sf = raw.manifest["scaling_factor"]
    torch.testing.assert_close(items[3]["x"], raw[3]["latent"] * sf)
    torch.testing.assert_close(items.ds.unscale(items[3]["x"]), raw[3]["latent"])
    stacked = torch.stack([items[i]["x"] for i in range(len(items))])
    assert stacked.std(correction=0).item() == pytest.approx(1.0, rel=1e-3)  # unit variance after scaling


def test_prior_trains_through_the_trainer_and_samples_a_grid(latents, tmp_path, tiny_config):
    from train.run import train

    cfg = tiny_config(tmp_path / "run", "model.kind=diffusion_prior", f"data.path={latents / 'lat'}",
                      "model.unet.block_out_channels=[16,32]", "model.unet.norm_num_groups=8",
                      f"model.first_stage={latents / 'vae'}", "train.max_steps=4", "train.eval_every=4",
                      "train.checkpoint_every=4", "model.prediction_type=v_prediction")
    trainer = train(cfg)
    rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "prior/loss" in r] == [1, 2, 3, 4]
    assert any("eval/sample_std" in r for r in rows)
    assert (tmp_path / "run/samples/sample-0000004.png").is_file()
    assert (tmp_path / "run/model/unet/config.json").is_file()
    assert json.loads((tmp_path / "run/model/prior.json").read_text())["latent_shape"] == [4, 8, 8]
    # Its model card: how aetk loads it, and no `aetk eval` command (a prior has no eval report).
    card = (tmp_path / "run/model/README.md").read_text()
    assert "# model: DiffusionPrior" in card and 'aetk.load("model")' in card and "aetk eval" not in card
    trainer.close()
    for sampler in ("ddim", "dpm++"):
        out = tmp_path / f"{sampler}.png"
        assert main(["sample", str(tmp_path / "run"), "--n", "4", "--steps", "3", "--sampler", sampler,
                     "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sampling_is_deterministic_for_a_seed_and_v_target_is_velocity():
    torch.manual_seed(0)
    prior = DiffusionPrior(build_unet(latent_channels=2, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8), prediction_type="v_prediction").eval()
    a = sample(prior, n=2, shape=(2, 8, 8), seed=3, steps=4)
    b = sample(prior, n=2, shape=(2, 8, 8), seed=3, steps=4)
    c = sample(prior, n=2, shape=(2, 8, 8), seed=4, steps=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    x0, noise, t = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8), torch.tensor([1, 999])
    ac = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = ac.sqrt() * noise - (1 - ac).sqrt() * x0
    torch.testing.assert_close(prior.scheduler.get_velocity(x0, noise, t), v)
