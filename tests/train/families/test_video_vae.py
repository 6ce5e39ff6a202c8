"""The video VAE family through the one trainer: trains with the GAN phase on, exports a diffusers
AutoencoderKLWan with measured latents_mean/std that reconstructs like aetk, resumes exactly, and
`aetk eval` reports it beside the space-time PCA baseline."""

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from helpers import load_script

from train.config import ConfigError
from train.run import train

VIDEO = ["model.kind=video_vae", "train.mixed_precision=no", "train.max_steps=4", "train.eval_every=4",
         "train.checkpoint_every=2",
         "train.latent_stats_images=8"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    from helpers import tiny_overrides

    from train.recipe import config_from_dict

    out = tmp_path_factory.mktemp("video")
    trainer = train(config_from_dict({}, tiny_overrides(out / "run", *VIDEO)))
    yield out / "run", trainer
    trainer.close()


def test_trains_with_gan_and_exports_a_diffusers_wan_vae(video_run):
    run, trainer = video_run
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "generator/loss" in r]
    assert len(train_rows) == 4 and all("reg/kl" in r for r in train_rows)
    assert all("disc/loss" in r for r in train_rows[3:])  # disc_start=3: the per-frame PatchGAN ran
    evals = [r for r in rows if "eval/psnr" in r]
    assert evals and "eval/temporal_l1" in evals[-1]
    assert list((run / "samples").glob("recon-*.png"))

    vae = AutoencoderKLWan.from_pretrained(run / "model").eval()
    stats = json.loads((run / "model/latent_stats.json").read_text())
    assert list(vae.config.latents_mean) == pytest.approx(stats["latents_mean"])
    assert list(vae.config.latents_std) == pytest.approx(stats["latents_std"])
    assert stats["latents_std"] != [1.0] * 4  # measured, not the defaults

    model = trainer.averaged_model().eval()
    x = torch.stack([trainer.loaders.val_dataset[i]["x"] for i in range(2)])  # (2, 3, 5, 16, 16)
    with torch.no_grad():
        theirs = vae.decode(vae.encode(x).latent_dist.mode()).sample
        torch.testing.assert_close(model.reconstruct(x), theirs, rtol=0, atol=1e-5)
        # The measured numbers normalise the training clips' latents to zero mean and unit variance.
        clips = torch.stack([trainer.loaders.train_dataset[i]["x"] for i in range(8)])
        z = model.normalize(model.encode(clips)).transpose(0, 1).reshape(4, -1).double()
    torch.testing.assert_close(z.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0)


def test_load_run_and_eval_beside_pca(video_run, tmp_path):
    import aetk
    from aetk.cli import main
    from tokenizers_ae.models.video_vae import VideoVAE

    run, _ = video_run
    assert isinstance(aetk.load(run), VideoVAE) and isinstance(aetk.load(run / "model"), VideoVAE)
    out = tmp_path / "eval.json"
    assert main(["eval", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16",
                 "--frames", "9", "--n", "4", "--fit-n", "16", "--baseline", "pca", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 9 and report["n"] == 4
    assert {"psnr", "ssim", "temporal_l1"} <= set(report["model"]) and "psnr" in report["pca"]
    assert report["latent_values_per_video"] == 4 * 3 * 4 * 4
    assert report["strip"].endswith("video-strip.png") and (tmp_path / "eval-files/video-strip.png").is_file()
    card = report["protocol"]
    assert card["kind"] == "video" and card["data"]["items"] == 4 and card["settings"]["frames"] == 9
    # --protocol repeats it exactly, whatever else the command line says.
    again = tmp_path / "again.json"
    assert main(["eval", str(run / "model"), "--protocol", str(out), "--frames", "5", "--json", str(again)]) == 0
    rerun = json.loads(again.read_text())
    assert rerun["protocol"]["data"] == card["data"] and rerun["model"]["psnr"] == report["model"]["psnr"]
    # The figures go into the model card of an export of the same weights (a diffusers AutoencoderKLWan).
    assert main(["export", str(run / "model"), "--out", str(tmp_path / "wan"), "--eval", str(out)]) == 0
    text = (tmp_path / "wan" / "README.md").read_text()
    assert "# wan: AutoencoderKLWan" in text and "## Held-out evaluation: eval" in text and "frames 9" in text
    assert f"| temporal_l1 | {report['model']['temporal_l1']:.4g} | {report['pca']['temporal_l1']:.4g} |" in text


def test_eval_on_one_digit_clips_records_and_repeats_the_digit_count(video_run, tmp_path):
    from aetk.cli import main

    run, _ = video_run
    common = ["eval", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16", "--frames", "5",
              "--n", "3", "--fit-n", "8"]
    two, one, again = (tmp_path / f"{name}.json" for name in ("two", "one", "again"))
    assert main([*common, "--json", str(two)]) == 0
    assert main([*common, "--builtin-digits", "1", "--json", str(one)]) == 0
    cards = [json.loads(p.read_text())["protocol"] for p in (two, one)]
    assert [c["settings"]["builtin_digits"] for c in cards] == [2, 1]
    assert cards[0]["data"]["sha256"] != cards[1]["data"]["sha256"]  # other clips were evaluated
    assert cards[0]["settings"]["fit_sha256"] != cards[1]["settings"]["fit_sha256"]  # and PCA fitted on others
    assert main(["eval", str(run / "model"), "--protocol", str(one), "--json", str(again)]) == 0
    assert json.loads(again.read_text())["protocol"]["data"] == cards[1]["data"]


def test_flags_a_video_eval_cannot_honour_are_refused(video_run, tmp_path, capsys):
    from aetk.cli import main

    run, _ = video_run
    common = ["--resolution", "16", "--frames", "5", "--n", "2"]
    for args, text in (
            (["eval", "--data", "builtin:moving-digits", "--baseline", "jpeg"], "--baseline jpeg: images only"),
            (["eval", "--data", str(tmp_path / "videos"), "--builtin-digits", "1"], "--builtin-digits 1: for"),
            (["encode", "--data", str(tmp_path / "videos"), "--out", str(tmp_path / "lat"), "--builtin-digits", "3"],
             "--builtin-digits 3: for"),
            (["eval", "--data", "builtin:moving-digits", "--latent-bits", "8"], "--latent-bits does nothing for"),
            (["encode", "--data", "builtin:moving-digits", "--out", str(tmp_path / "lat"), "--kbps", "6"],
             "--kbps does nothing for")):
        assert main([args[0], str(run / "model"), *args[1:], *common]) != 0
        err = capsys.readouterr().err
        assert text in err, (args, err)
    assert not (tmp_path / "lat").exists()


def test_recipe_checks_clip_length_and_fsq(tmp_path):
    from helpers import tiny_overrides

    from train.recipe import config_from_dict

    with pytest.raises(ConfigError, match=r"data.frames: must be 1 \+ k\*4"):
        config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "data.frames=8"))
    with pytest.raises(ConfigError, match="model.temporal_downsample"):
        config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "model.temporal_downsample=[true]"))
    with pytest.raises(ConfigError, match="model.quantizer.type: must be fsq"):
        config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "model.quantizer.type=vq"))
    with pytest.raises(ConfigError, match="is a key of model.kind=kl_vae"):
        config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "model.block_out_channels=[8]"))
    # Wan 2.2's residual blocks: widths their shortcuts cannot join are named before diffusers' assertion
    with pytest.raises(ConfigError, match=r"model.dim_mult: .*encoder level 2 cannot average 64 x 1 channels into 128"):
        config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "model.residual=true", "model.base_dim=32",
                                            "model.dim_mult=[1,2,4]", "model.temporal_downsample=[true,true]"))
    from train.families.video_vae import build_model

    cfg = config_from_dict({}, tiny_overrides(tmp_path, *VIDEO, "model.residual=true", "model.dim_mult=[1,2,2]",
                                              "model.temporal_downsample=[true,true]", "data.frames=5"))
    assert build_model(cfg).vae.config.is_residual


def test_fsq_video_tokens_train_and_export_natively(tmp_path):
    from helpers import tiny_overrides

    import aetk
    from train.recipe import config_from_dict

    cfg = config_from_dict({}, tiny_overrides(tmp_path / "run", *VIDEO, "model.quantizer.type=fsq",
                                              "model.quantizer.fsq_levels=[5,5,5]", "train.max_steps=2",
                                              "loss.disc_start=100"))
    trainer = train(cfg)
    try:
        rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
        assert any("fsq/usage" in r for r in rows)
        loaded = aetk.load(tmp_path / "run/model")
        x = torch.stack([trainer.loaders.val_dataset[i]["x"] for i in range(2)])
        with torch.no_grad():
            tokens = loaded.tokens(x)
            assert tokens.shape == (2, 2, 4, 4)
            torch.testing.assert_close(loaded.decode_indices(tokens),
                                       trainer.averaged_model().eval().reconstruct(x), rtol=0, atol=1e-5)
    finally:
        trainer.close()


def test_resume_from_a_middle_checkpoint_is_exact(video_run, tmp_path):
    """Killed after step 2 (GAN onset at 3 still ahead): resuming ends with the uninterrupted run's weights."""
    import shutil

    from helpers import tiny_overrides
    from safetensors.torch import load_file

    from train.recipe import config_from_dict

    run, _ = video_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints/step-4")
    shutil.rmtree(copy / "model")
    train(config_from_dict({}, tiny_overrides(copy, *VIDEO))).close()
    for name in ("model.safetensors", "model_1.safetensors", "extra.safetensors"):
        a, b = load_file(run / "checkpoints/step-4" / name), load_file(copy / "checkpoints/step-4" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k}"


def test_encode_writes_video_latent_shards_equal_to_the_model(video_run, tmp_path):
    from aetk.cli import main
    from latent_diffusion.shards import LatentShardDataset
    from tokenizers_ae.data.video import MovingDigits

    run, trainer = video_run
    out = tmp_path / "lat"
    args = ["encode", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16", "--frames", "9",
            "--out", str(out), "--shard-size", "16", "--precision", "no", "--split", "val"]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "aetk-latents" and m["latent_shape"] == [4, 3, 4, 4] and m["count"] == 512
    assert m["temporal_factor"] == 4 and m["frames"] == 9 and m["num_classes"] == 10
    model = trainer.averaged_model().eval()
    assert m["latents_std"] == pytest.approx(list(model.vae.config.latents_std))
    ds = LatentShardDataset(out)
    src = MovingDigits(split="val", frames=9, resolution=16)
    items = [ds[i] for i in (0, 17, 300)]
    with torch.no_grad():
        ref = model.encode(torch.stack([src[it["index"]]["x"] for it in items]))
    torch.testing.assert_close(torch.stack([it["latent"].float() for it in items]), ref, atol=2e-3, rtol=1e-3)
    assert [it["label"] for it in items] == [src.label(it["index"]) for it in items]
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.glob("shard-*"))
    assert main(args) == 0  # a finished encode is a no-op
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.glob("shard-*")) == before

    one = tmp_path / "lat-one"  # --builtin-digits 1: one digit per clip, in the job record
    assert main(args[:-8] + ["--out", str(one), "--precision", "no", "--builtin-size", "4",
                             "--builtin-digits", "1"]) == 0
    assert json.loads((one / "manifest.json").read_text())["count"] == 4
    assert json.loads((one / "encode_job.json").read_text())["builtin_digits"] == 1
    assert "builtin_digits" not in json.loads((out / "encode_job.json").read_text())  # the default: old jobs resume
    it = LatentShardDataset(one)[0]
    src1 = MovingDigits(frames=9, resolution=16, digits=1)
    with torch.no_grad():
        ref1, ref2 = model.encode(torch.stack([src1[it["index"]]["x"],
                                               MovingDigits(frames=9, resolution=16)[it["index"]]["x"]]))
    torch.testing.assert_close(it["latent"].float(), ref1, atol=2e-3, rtol=1e-3)
    assert (it["latent"].float() - ref2).abs().max() > 0.1


def test_a_video_prior_trains_on_encoded_latents_and_samples_clips(video_run, tmp_path):
    """The diffusion prior's DiT takes the (c, t, h, w) latents as spatio-temporal patches (Wan's
    transformer), class-conditional on the first digit; samples decode through the video VAE."""
    from PIL import Image

    from aetk.cli import main
    from latent_diffusion.diffusion_prior import DiffusionPrior
    from latent_diffusion.video_dit import ClassVideoDiT
    from train.recipe import config_from_dict

    run, _ = video_run
    lat = tmp_path / "lat"
    assert main(["encode", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16",
                 "--frames", "9", "--out", str(lat), "--shard-size", "64", "--precision", "no"]) == 0
    cfg = config_from_dict({}, [
        f"output_dir={tmp_path / 'prior'}", "model.kind=diffusion_prior", f"data.path={lat}", "data.val_size=4",
        "model.denoiser=dit", "model.dit.num_layers=1", "model.dit.head_dim=8", "model.dit.patch_size=2",
        "model.dit.adaln_class=true",  # as configs/video-prior-digits.yaml
        "model.class_conditional=true", f"model.first_stage={run / 'model'}", "train.batch_size=4",
        "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=2", "train.mixed_precision=no",
        "train.progress=false", "train.lr=1e-3"])
    train(cfg).close()
    assert (tmp_path / "prior/samples/sample-0000002.gif").is_file()
    prior = DiffusionPrior.from_pretrained(tmp_path / "prior/model")
    assert isinstance(prior.net, ClassVideoDiT) and prior.latent_shape == [4, 3, 4, 4] and prior.num_classes == 10
    assert prior.net.config.adaln_class
    assert (tmp_path / "prior/model/transformer/config.json").is_file()
    out = tmp_path / "clips.png"
    assert main(["sample", str(tmp_path / "prior/model"), "--n", "3", "--steps", "2", "--label", "7",
                 "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.size == (9 * 18 + 2, 3 * 18 + 2)  # one clip of 9 frames (16 px + 2 px padding) per row
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames == 9

    # scripts/digit_legibility.py reads this prior and its first stage: clips of 9 frames at 16 px
    script = load_script("digit_legibility")
    assert script.main([str(tmp_path / "prior/model"), "--n", "4", "--steps", "2", "--train-clips", "8",
                        "--epochs", "1", "--source", "digits", "--json", str(tmp_path / "leg.json")]) == 0
    r = json.loads((tmp_path / "leg.json").read_text())
    assert (r["frames"], r["resolution"], r["n"]) == (9, 16, 4)
    assert all(0 <= r[k] <= 1 for k in ("real_heldout", "first_stage_reconstructions", "prior_samples"))


def test_export_verb_writes_a_loadable_wan_directory(video_run, tmp_path):
    from aetk.cli import main

    run, trainer = video_run
    assert main(["export", str(run), "--out", str(tmp_path / "wan")]) == 0
    vae = AutoencoderKLWan.from_pretrained(tmp_path / "wan").eval()
    x = torch.stack([trainer.loaders.val_dataset[i]["x"] for i in range(1)])
    with torch.no_grad():
        theirs = vae.decode(vae.encode(x).latent_dist.mode()).sample
        torch.testing.assert_close(trainer.averaged_model().eval().reconstruct(x), theirs, rtol=0, atol=1e-5)


def test_tile_is_refused_with_the_reason_not_ignored(video_run, tmp_path, capsys):
    from aetk.cli import main

    run, _ = video_run
    for args in (["eval", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16",
                  "--frames", "5", "--n", "2", "--tile", "8"],
                 ["encode", str(run / "model"), "--data", "builtin:moving-digits", "--resolution", "16",
                  "--frames", "5", "--out", str(tmp_path / "lat"), "--tile", "8"]):
        assert main(args) != 0
        assert "spatial tiling cannot be exact" in capsys.readouterr().err
    assert not (tmp_path / "lat").exists()


def test_builtin_digits_reaches_the_training_clips(tmp_path, tiny_config):
    from train.families.video_vae import datasets

    train_ds, val_ds = datasets(tiny_config(tmp_path, "model.kind=video_vae", "data.builtin_digits=1"))
    assert train_ds.digits == 1 and val_ds.digits == 1
    with pytest.raises(ConfigError, match="data.builtin_digits"):
        tiny_config(tmp_path, "model.kind=video_vae", "data.builtin_digits=0")


def test_video_recipe_builds_the_temporal_term(tmp_path, tiny_config):
    from train.families.video_vae import build_model, build_task

    cfg = tiny_config(tmp_path, "model.kind=video_vae", "loss.temporal_weight=0.25")
    task = build_task(cfg, build_model(cfg))
    assert task.rec_loss.weight == 0.25 and task.rec_loss.perceptual is not None
    with pytest.raises(ConfigError, match="loss.temporal_weight"):
        tiny_config(tmp_path, "model.kind=video_vae", "loss.temporal_weight=-1")


def test_the_shipped_recipe_trains_its_colour_term_and_exports_wan_2_2_blocks(tmp_path):
    """configs/video-tiny.yaml as shipped (Wan 2.2's residual blocks, L2 + the colour term + MS-SSIM + the
    flicker term, wsd), narrowed to base_dim 8 and 3 steps: the colour term is logged, and the export is a
    residual AutoencoderKLWan that diffusers loads and that reconstructs like aetk."""
    from train.recipe import load_config

    cfg = load_config("configs/video-tiny.yaml", [
        f"output_dir={tmp_path / 'run'}", "data.path=builtin:moving-digits", "data.val_path=builtin:moving-digits",
        "data.frames=5", "data.builtin_size=16", "data.val_size=2", "model.base_dim=8", "train.max_steps=3",
        "train.warmup_steps=1", "train.eval_every=3", "train.checkpoint_every=3", "train.log_every=1",
        "train.progress=false", "train.curves=false", "train.latent_stats_images=8"])
    assert cfg.model.residual and cfg.loss.chroma_weight > 0 and cfg.loss.rec_loss == "l2"
    trainer = train(cfg)
    try:
        rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
        assert all(r["rec/chroma"] >= 0 for r in rows if "generator/loss" in r)
        vae = AutoencoderKLWan.from_pretrained(tmp_path / "run/model").eval()
        assert vae.config.is_residual
        model = trainer.averaged_model().eval()
        x = torch.stack([trainer.loaders.val_dataset[i]["x"] for i in range(2)])  # (2, 3, 5, 32, 32)
        with torch.no_grad():
            theirs = vae.decode(vae.encode(x).latent_dist.mode()).sample
            torch.testing.assert_close(model.reconstruct(x), theirs, rtol=0, atol=1e-5)
    finally:
        trainer.close()
