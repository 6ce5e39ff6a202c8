"""Class labels through encode, label dropout, classifier-free guidance, DiT, the pixel baseline and
the diffusers pipeline export (loaded offline, same sample as aetk for the same seed)."""

import json

import pytest
import torch
from diffusers import DiffusionPipeline

from aetk.cli import main
from latent_diffusion.diffusion_prior import DiffusionPrior, build_dit, build_unet, sample
from tokenizers_ae.models.kl_vae import KLVAE
from train.config import ConfigError

PRIOR = ["model.kind=diffusion_prior", "model.unet.block_out_channels=[16,32]", "model.unet.norm_num_groups=8",
         "train.max_steps=3", "train.eval_every=3", "train.checkpoint_every=3", "data.val_size=10"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny random 1-channel KL-VAE and its labelled latents of builtin:digits at 16 px."""
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    root = tmp_path_factory.mktemp("digits")
    torch.manual_seed(0)
    build_autoencoder_kl(in_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                         latent_channels=4).save_pretrained(root / "vae")
    assert main(["encode", str(root / "vae"), "--data", "builtin:digits", "--resolution", "16", "--out",
                 str(root / "lat"), "--precision", "no", "--shard-size", "512"]) == 0
    return root


def test_encode_stores_each_items_label(digits):
    from latent_diffusion.shards import LatentShardDataset
    from tokenizers_ae.data.digits import digits_split

    ds = LatentShardDataset(digits / "lat")
    manifest = json.loads((digits / "lat/manifest.json").read_text())
    assert manifest["num_classes"] == 10 and manifest["class_names"][3] == "3"
    _, y = digits_split("train")
    assert [ds[i]["label"] for i in (0, 7, 600, len(ds) - 1)] == [int(y[ds[i]["index"]]) for i in
                                                                  (0, 7, 600, len(ds) - 1)]


def test_encode_split_val_holds_the_held_out_digits(digits, tmp_path):
    from latent_diffusion.shards import LatentShardDataset
    from tokenizers_ae.data.digits import digits_split

    assert main(["encode", str(digits / "vae"), "--data", "builtin:digits", "--resolution", "16", "--split", "val",
                 "--out", str(tmp_path / "val"), "--precision", "no"]) == 0
    ds = LatentShardDataset(tmp_path / "val")
    _, y = digits_split("val")
    assert len(ds) == len(y) and [ds[i]["label"] for i in range(5)] == y[:5].tolist()


def test_image_folder_classes_come_from_subfolders(tmp_path):
    from PIL import Image

    from tokenizers_ae.data.sources import build_image_dataset

    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / cls / f"{i}.png")
    ds = build_image_dataset(str(tmp_path), resolution=8)
    assert ds.class_names == ["cat", "dog"]
    assert [ds[i]["y"] for i in range(3)] == [0, 0, 1]
    (tmp_path / "loose.png").write_bytes((tmp_path / "dog/0.png").read_bytes())  # not all in class folders
    assert build_image_dataset(str(tmp_path), resolution=8).class_names is None


def test_label_dropout_sends_the_drawn_fraction_to_the_null_class():
    from train.prior_task import DiffusionPriorTask
    from train.tasks import StepContext

    prior = DiffusionPrior(build_unet(latent_channels=2, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8, num_classes=3), num_classes=3)
    seen = {}

    def spy(x, t, class_labels=None):  # what the denoiser is asked to condition on
        seen["y"] = class_labels
        return type("Out", (), {"sample": x})()

    prior.net.forward = spy
    u = torch.tensor([[0.5, 0.05], [0.5, 0.5], [0.1, 0.09], [0.9, 0.95]])
    ctx = StepContext(step=0, noise=lambda s: torch.zeros(s), uniform=lambda s: u[:, :s[1]])
    task = DiffusionPriorTask(prior=prior, lr=1e-3, cond_dropout=0.1)
    task.forward({"prior": prior}, {"x": torch.zeros(4, 2, 8, 8), "y": torch.tensor([0, 1, 2, 1])}, ctx)
    assert seen["y"].tolist() == [3, 1, 3, 1]  # items drawing < 0.1 learn the null class (index 3)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_gamma_weights_each_items_loss_by_its_timestep(prediction):
    """model.snr_gamma: item losses weighted min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), SNR =
    alpha_bar / (1 - alpha_bar) at the item's timestep; nearly clean timesteps count for little."""
    from train.families.diffusion_prior import DiffusionPriorModel
    from train.prior_task import DiffusionPriorTask
    from train.tasks import StepContext

    torch.manual_seed(0)
    prior = DiffusionPrior(build_unet(latent_channels=2, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8), prediction_type=prediction)
    x0, noise = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    u = torch.tensor([[0.01, 0.0], [0.2, 0.0], [0.6, 0.0], [0.99, 0.0]])  # timesteps 10, 200, 600, 990
    ctx = StepContext(step=0, noise=lambda s: noise, uniform=lambda s: u[:, :s[1]])
    t = torch.tensor([10, 200, 600, 990])
    with torch.no_grad():
        per_item = prior(x0, noise, t).double()  # (4,)
        plain = DiffusionPriorTask(prior=prior, lr=1e-3).forward({"prior": prior}, {"x": x0}, ctx)
        weighted = DiffusionPriorTask(prior=prior, lr=1e-3, snr_gamma=5.0).forward({"prior": prior}, {"x": x0}, ctx)
    alpha_bar = prior.scheduler.alphas_cumprod[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    w = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    assert float(plain) == pytest.approx(float(per_item.mean()), rel=1e-5)
    assert float(weighted) == pytest.approx(float((per_item * w).mean()), rel=1e-5)
    assert w[0] < 0.05 and float(weighted) < float(plain)  # step 10: SNR ~ 1,000
    if prediction == "epsilon":
        assert w[3] == 1.0  # noisy steps keep their full weight
    with pytest.raises(ConfigError, match="model.snr_gamma"):
        DiffusionPriorModel(snr_gamma=0.0)


def test_guidance_one_is_conditional_sampling_and_labels_are_checked():
    torch.manual_seed(0)
    prior = DiffusionPrior(build_unet(latent_channels=2, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8, num_classes=3), num_classes=3).eval()
    y = torch.tensor([0, 2])
    plain = sample(prior, n=2, shape=(2, 8, 8), seed=1, steps=3, labels=y)
    assert torch.equal(plain, sample(prior, n=2, shape=(2, 8, 8), seed=1, steps=3, labels=y, guidance=1.0))
    assert not torch.allclose(plain, sample(prior, n=2, shape=(2, 8, 8), seed=1, steps=3, labels=y, guidance=4.0))
    with pytest.raises(ValueError, match="0..2"):
        sample(prior, n=1, shape=(2, 8, 8), steps=2, labels=torch.tensor([3]))


def _pipeline_images(model_dir, **kwargs) -> torch.Tensor:
    pipe = DiffusionPipeline.from_pretrained(model_dir)  # local directory: nothing downloaded
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(5), num_inference_steps=4, **kwargs).images
    return torch.as_tensor(out).permute(0, 3, 1, 2) if not torch.is_tensor(out) else out


def _aetk_images(model_dir, n, labels=None, guidance=1.0) -> torch.Tensor:
    prior = DiffusionPrior.from_pretrained(model_dir)
    z = sample(prior, n=n, seed=5, steps=4, labels=labels, guidance=guidance)
    if prior.space == "pixel":
        return (z / 2 + 0.5).clamp(0, 1)
    vae = KLVAE.from_pretrained(model_dir / "vae" if (model_dir / "vae").is_dir() else model_dir / "vqvae")
    with torch.no_grad():
        return (vae.decode(z / prior.scaling_factor) / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("denoiser", ["unet", "dit"])
def test_conditional_prior_trains_and_exports_a_dit_pipeline_with_the_same_samples(digits, tmp_path, tiny_config,
                                                                                     denoiser):
    from train.run import train

    cfg = tiny_config(tmp_path / "run", *PRIOR, f"data.path={digits / 'lat'}", f"model.first_stage={digits / 'vae'}",
                      "model.class_conditional=true", f"model.denoiser={denoiser}", "model.dit.num_layers=2",
                      "model.dit.head_dim=8", "model.dit.num_heads=2")
    train(cfg).close()
    model = tmp_path / "run/model"
    meta = json.loads((model / "prior.json").read_text())
    assert meta["pipeline"] == "DiTPipeline" and meta["num_classes"] == 10 and meta["null_label"] == 1000
    assert (tmp_path / "run/samples/sample-0000003.png").is_file()
    ours = _aetk_images(model, 3, labels=torch.tensor([1, 7, 3]), guidance=3.0)
    theirs = _pipeline_images(model, class_labels=[1, 7, 3], guidance_scale=3.0, output_type="pt")
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=0)
    assert main(["sample", str(tmp_path / "run"), "--n", "4", "--steps", "2", "--label", "3,7",
                 "--out", str(tmp_path / "g.png")]) == 0


def test_unconditional_latent_prior_exports_an_ldm_pipeline_with_the_same_samples(digits, tmp_path):
    torch.manual_seed(0)
    sf = json.loads((digits / "lat/manifest.json").read_text())["scaling_factor"]
    prior = DiffusionPrior(build_unet(latent_channels=4, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8), prediction_type="v_prediction", latent_shape=[4, 8, 8],
                           scaling_factor=sf, first_stage=str(digits / "vae"))
    assert prior.save_pretrained(tmp_path / "m", first_stage=KLVAE.from_pretrained(digits / "vae")) == "LDMPipeline"
    assert KLVAE.from_pretrained(tmp_path / "m/vqvae").scaling_factor == pytest.approx(sf)
    assert not DiffusionPrior.from_pretrained(tmp_path / "m").scheduler.config.clip_sample  # latents: no clamp
    ours = _aetk_images(tmp_path / "m", 2)
    theirs = _pipeline_images(tmp_path / "m", batch_size=2, output_type="np")
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=0)


def test_a_shifted_latent_prior_keeps_its_shift_and_writes_no_pipeline_that_would_ignore_it(digits, tmp_path,
                                                                                                 caplog):
    prior = DiffusionPrior(build_unet(latent_channels=4, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8), latent_shape=[4, 8, 8], scaling_factor=0.5, shift_factor=0.25,
                           first_stage=str(digits / "vae"))
    with caplog.at_level("INFO"):
        assert prior.save_pretrained(tmp_path / "m", first_stage=KLVAE.from_pretrained(digits / "vae")) == ""
    assert "no pipeline is written" in caplog.text and not (tmp_path / "m/model_index.json").exists()
    loaded = DiffusionPrior.from_pretrained(tmp_path / "m")
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.5, 0.25)


def test_pixel_baseline_trains_on_images_and_exports_a_ddpm_pipeline(tmp_path, tiny_config):
    from train.run import train

    cfg = tiny_config(tmp_path / "px", *PRIOR, "data.path=builtin:digits", "data.resolution=16")
    train(cfg).close()
    prior = DiffusionPrior.from_pretrained(tmp_path / "px/model")
    meta = json.loads((tmp_path / "px/model/prior.json").read_text())
    assert prior.space == "pixel" and prior.latent_shape == [1, 16, 16] and meta["pipeline"] == "DDPMPipeline"
    assert prior.scheduler.config.beta_schedule == "linear"  # DDPM's schedule for pixels
    assert prior.scheduler.config.clip_sample  # pixels live in [-1, 1]; latents must not be clamped
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "px/model")
    assert type(pipe).__name__ == "DDPMPipeline"
    assert (tmp_path / "px/samples/sample-0000003.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "px/metrics.jsonl").read_text().splitlines()]
    ev = next(r for r in rows if "eval/nn_rms_sample_to_train" in r)
    assert ev["eval/nn_rms_val_to_train"] > 0 and ev["eval/val_denoise_loss"] > 0


def test_class_conditional_on_unlabelled_latents_is_a_config_error(tmp_path, tiny_config):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl
    from train.families.diffusion_prior import build_model

    build_autoencoder_kl(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_pretrained(tmp_path / "v")
    assert main(["encode", str(tmp_path / "v"), "--data", "builtin:skimage", "--resolution", "8", "--out",
                 str(tmp_path / "lat"), "--precision", "no"]) == 0
    cfg = tiny_config(tmp_path / "r", *PRIOR, f"data.path={tmp_path / 'lat'}", "model.class_conditional=true")
    with pytest.raises(ConfigError, match="no class labels"):
        build_model(cfg)


def test_dit_denoiser_is_exact_under_its_own_label_dropout_switched_off():
    dit = build_dit(latent_channels=2, sample_size=8, num_layers=1, num_heads=2, head_dim=8, num_classes=3).train()
    x, t, y = torch.randn(2, 2, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    torch.manual_seed(0)
    a = dit(x, t, class_labels=y).sample
    torch.manual_seed(1)  # diffusers' own dropout would draw from the global RNG here
    assert torch.equal(a, dit(x, t, class_labels=y).sample)


def test_nearest_neighbour_distance_flags_copies_and_denoising_loss_is_repeatable():
    from eval.prior import denoising_loss, nn_rms

    train = torch.rand(20, 1, 8, 8) * 2 - 1
    copies, fresh = train[[3, 11]].clone(), torch.rand(2, 1, 8, 8) * 2 - 1
    assert nn_rms(copies, train).max() < 1e-6 and nn_rms(fresh, train).min() > 0.1
    prior = DiffusionPrior(build_unet(latent_channels=1, sample_size=8, block_out_channels=(16, 32),
                                      norm_num_groups=8)).eval()
    assert denoising_loss(prior, train[:4]) == denoising_loss(prior, train[:4])
    assert denoising_loss(prior, train[:4], seed=1) != denoising_loss(prior, train[:4])


def test_conditional_prior_resumes_exactly(digits, tmp_path, tiny_config):
    """Timesteps, noise and label dropout are positional draws: 2 + resume + 2 steps == 4 steps."""
    from train.loop import Trainer

    extra = [*PRIOR, f"data.path={digits / 'lat'}", "model.class_conditional=true", "model.cond_dropout=0.5",
             "train.mixed_precision=no"]

    def run(out, steps, resume=False):
        t = Trainer(tiny_config(out, *extra))
        if resume:
            assert t.maybe_resume() is not None and t.step_idx == 2
        for _ in range(steps):
            t.step(t.next_micro_batches())
        if not resume:
            t.save()
        w = {k: v.clone() for k, v in t.task.prior.state_dict().items()}
        t.close()
        return w

    wa = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    wc = run(tmp_path / "b", 2, resume=True)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_validation_latents_are_scaled_with_the_training_factor(digits, tmp_path, tiny_config):
    from latent_diffusion.shards import LatentShardDataset
    from train.data.sources import prior_datasets

    assert main(["encode", str(digits / "vae"), "--data", "builtin:digits", "--resolution", "16", "--split", "val",
                 "--out", str(tmp_path / "val"), "--precision", "no"]) == 0
    cfg = tiny_config(tmp_path / "r", *PRIOR, f"data.path={digits / 'lat'}", f"data.val_path={tmp_path / 'val'}")
    train, val = prior_datasets(cfg)
    sf_train = train.scaling_factor
    assert LatentShardDataset(tmp_path / "val").scaling_factor != sf_train  # its own std differs
    torch.testing.assert_close(val[2]["x"], LatentShardDataset(tmp_path / "val")[2]["latent"] * sf_train)
