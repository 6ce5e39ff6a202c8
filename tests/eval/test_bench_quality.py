"""`aetk bench quality`: a fair race (same initial weights, same held-out scoring, the clock paused for
evaluations) between aetk's trainer and latent-diffusion's loop, with patch PCA as the floor."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from helpers import one_line
from PIL import Image
from skimage import data as skdata

from eval.bench.machine import cpu_name
from eval.bench.quality import LDM_BASE_LR, _codebook_size, _race, bench_quality, reference_for, time_to_reach


@pytest.fixture
def photo_folders(tmp_path):
    """Real photos (scikit-image's), 40 px crops: train from five photos, val from two others."""
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry(),
              skdata.hubble_deep_field(), skdata.retina()]
    rng = np.random.default_rng(0)
    for split, group in (("train", photos[:5]), ("val", photos[5:])):
        (tmp_path / split).mkdir()
        for i, img in enumerate(group):
            for k in range(6):
                y, x = (int(rng.integers(0, s - 160)) for s in img.shape[:2])
                Image.fromarray(img[y:y + 160, x:x + 160]).resize((40, 40), Image.BICUBIC).save(
                    tmp_path / split / f"{i}_{k}.png")
    return tmp_path


def test_time_to_reach_interpolates_between_evaluations():
    curve = [{"train_s": 0.0, "psnr": 10.0}, {"train_s": 10.0, "psnr": 20.0}, {"train_s": 20.0, "psnr": 22.0}]
    assert time_to_reach(curve, 15.0) == pytest.approx(5.0)
    assert time_to_reach(curve, 21.0) == pytest.approx(15.0)
    assert time_to_reach(curve, 9.0) == 0.0
    assert time_to_reach(curve, 23.0) is None


def test_race_clock_counts_training_only_and_stops_at_the_recipes_last_step():
    steps = 0

    def step():
        nonlocal steps
        time.sleep(0.01)
        steps += 1
        return steps

    def evaluate():
        time.sleep(0.05)  # evaluations pause the clock
        return {"psnr": float(steps)}

    points = _race(step, evaluate, budget_s=0.2, evals=2, name="t")
    assert 0.2 <= points[-1]["train_s"] < 0.25 and 10 <= points[-1]["step"] <= 20
    assert [p["train_s"] >= 0.1 for p in points] == [False, True, True]
    steps = 0
    points = _race(step, evaluate, budget_s=60.0, evals=2, name="t", max_steps=lambda: 5)
    assert points[-1]["step"] == 5 and points[-1]["train_s"] < 1.0 and len(points) == 2


def test_bench_quality_races_both_loops_fairly(tmp_path, tiny_config, photo_folders):
    cfg = tiny_config(tmp_path / "run", f"data.path={photo_folders / 'train'}",
                      f"data.val_path={photo_folders / 'val'}", "data.resolution=32", "train.lr=2e-3",
                      "train.mixed_precision=no", "train.max_steps=100000")
    res = bench_quality(cfg, budget_s=4.0, evals=2, val_n=12, fit_n=30, out_dir=tmp_path / "out")
    aetk, ref = res["curves"]["aetk"], res["curves"]["reference"]
    # Both start from the same weights, scored by the same code on the same held-out crops.
    assert aetk[0]["step"] == ref[0]["step"] == 0
    assert aetk[0]["psnr"] == pytest.approx(ref[0]["psnr"], abs=1e-6)
    for curve in (aetk, ref):
        times = [p["train_s"] for p in curve]
        assert times == sorted(times) and times[-1] >= 4.0 and len(curve) >= 2
        assert curve[-1]["step"] > 0
        assert all(np.isfinite([p[k] for k in ("psnr", "ms_ssim", "haarpsi")]).all() for p in curve)
    # aetk at lr 2e-3 learns in 4 s; latent-diffusion's loop at 4.5e-6 x batch barely moves.
    assert aetk[-1]["psnr"] > aetk[0]["psnr"] + 1.0
    assert res["setting"]["reference_lr"] == pytest.approx(LDM_BASE_LR * cfg.train.batch_size)
    assert res["setting"]["val_n"] == 12 and res["setting"]["factor"] == 2
    assert res["setting"]["cpu"] == cpu_name() and cpu_name() in res["title"]  # wall-clock figures name their CPU
    t = res["targets"]
    assert t["reference_final_psnr"] == ref[-1]["psnr"]
    assert t["half_the_time"] == (t["time_ratio"] is not None and t["time_ratio"] <= 0.5)
    assert t["beats_pca_psnr"] == (aetk[-1]["psnr"] > res["pca"]["psnr"])
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000


def test_reference_starts_from_the_recipes_weights(tmp_path, tiny_config):
    from train.families import family

    cfg = tiny_config(tmp_path / "run")
    ref = reference_for(cfg)
    torch.manual_seed(cfg.seed)
    ours = family(cfg.kind).build_model(cfg).vae
    assert all(torch.equal(a, b) for a, b in zip(ref.vae.state_dict().values(), ours.state_dict().values()))
    assert ref.opt_ae.param_groups[0]["betas"] == (0.5, 0.9)


def test_bench_quality_cli_says_what_is_wrong_in_one_line(tmp_path, capsys):
    # In-process (aetk.cli.main, as the console script calls it); tests/aetk/test_errors.py checks that a
    # fresh process prints the same single line.
    def run(argv: list[str]) -> str:
        rc, err = one_line(capsys, argv)
        assert rc != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    common = ["bench", "quality", "configs/kl-f4-tiny.yaml", "--out", str(tmp_path / "q"), "--minutes", "0.01"]
    assert "data.val_path" in run(common)  # builtin data: no held-out folder
    assert "KL-VAE and VQ" in run(["bench", "quality", "configs/codec-tiny.yaml", "--out", str(tmp_path / "q")])
    # key=value overrides are taken after the options too; an unknown option is still refused.
    assert "/nonexistent/aetk-val" in run([*common, "data.val_path=/nonexistent/aetk-val"])
    rc, err = one_line(capsys, [*common, "--bogus"])
    assert rc != 0 and "unrecognized arguments: --bogus" in err
    lfq = ["model.quantizer.type=lfq", "model.quantizer.lfq_bits=4", "model.latent_channels=4"]
    assert "lfq has none" in run(["bench", "quality", "configs/vq-f4-tiny.yaml", *lfq, "--out", str(tmp_path / "q")])
    assert "--minutes" in run([*common[:3], "--minutes", "0"])
    assert not (tmp_path / "q" / "quality.json").exists()


def test_vq_reference_is_tamings_vqgan_from_the_recipes_weights(tmp_path, tiny_config):
    from diffusers import VQModel

    from eval.bench.reference_vqgan import TAMING_VQGAN, vqgan_forward
    from train.families import family

    cfg = tiny_config(tmp_path / "run", "model.kind=vq_vae", "model.quantizer.codebook_size=64")
    ref = reference_for(cfg)
    torch.manual_seed(cfg.seed)
    ours = family(cfg.kind).build_model(cfg)
    assert isinstance(ref.model, VQModel)
    theirs = ref.model.state_dict()
    shared = {k: v for k, v in ours.state_dict().items() if not k.startswith("quantizer.")}
    assert shared and all(torch.equal(v, theirs[k]) for k, v in shared.items())
    # taming's codebook: uniform in +-1/K, learned by Adam through the codebook loss (no EMA, no k-means).
    codebook = ref.model.quantize.embedding.weight
    assert codebook.shape == (64, cfg.model.latent_channels) and codebook.abs().max() <= 1 / 64
    assert ref.opt_ae.param_groups[0]["lr"] == pytest.approx(TAMING_VQGAN["base_lr"] * cfg.train.batch_size)
    assert ref.opt_ae.param_groups[0]["betas"] == (0.5, 0.9)
    assert ref.loss.discriminator_iter_start == TAMING_VQGAN["disc_start"]
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    rec, qloss, idx = vqgan_forward(ref.model, x)
    assert rec.shape == x.shape and qloss.item() > 0 and idx.shape == (4, 16, 16)
    before = codebook.detach().clone()
    log = ref.step(x, global_step=0)
    assert np.isfinite(list(log.values())).all() and log["quant_loss"] > 0
    used = idx.unique()
    moved = (codebook.detach() - before).abs().sum(1) > 0
    assert moved[used].all(), "the codes used get gradients from the codebook loss"


def test_fsq_reference_trains_the_recipes_own_model(tmp_path, tiny_config):
    from tokenizers_ae.models.vq_vae import VQVAE
    from tokenizers_ae.quantizers import FSQ

    cfg = tiny_config(tmp_path / "run", "model.kind=vq_vae", "model.quantizer.type=fsq",
                      "model.quantizer.fsq_levels=[5,5,5,5]")
    ref = reference_for(cfg)
    assert isinstance(ref.model, VQVAE) and isinstance(ref.model.quantizer, FSQ)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    before = ref.model.decoder.conv_out.weight.detach().clone()
    log = ref.step(x, global_step=0)
    assert log["quant_loss"] == 0.0 and not torch.equal(before, ref.model.decoder.conv_out.weight)
    assert _codebook_size(cfg) == 5 ** 4  # usage is counted against FSQ's grid, not model.quantizer.codebook_size
    with pytest.raises(ValueError, match="lfq has none"):
        reference_for(tiny_config(tmp_path / "run", "model.kind=vq_vae", "model.quantizer.type=lfq",
                                  "model.quantizer.lfq_bits=4", "model.latent_channels=4"))


def test_bench_quality_races_a_vq_recipe_and_reports_codebook_usage(tmp_path, tiny_config, photo_folders):
    cfg = tiny_config(tmp_path / "run", "model.kind=vq_vae", "model.quantizer.codebook_size=32",
                      f"data.path={photo_folders / 'train'}", f"data.val_path={photo_folders / 'val'}",
                      "data.resolution=32", "train.lr=2e-3", "train.mixed_precision=no", "train.max_steps=100000")
    res = bench_quality(cfg, budget_s=2.0, evals=1, val_n=12, fit_n=30, out_dir=tmp_path / "out")
    aetk, ref = res["curves"]["aetk"], res["curves"]["reference"]
    assert aetk[0]["step"] == ref[0]["step"] == 0 and aetk[-1]["step"] > 0 and ref[-1]["step"] > 0
    for curve in (aetk, ref):
        assert all(0 < p["usage"] <= 1 and p["usage"] * 32 == round(p["usage"] * 32) for p in curve)
    t = res["targets"]
    assert t["codebook_usage"] == aetk[-1]["usage"]
    assert t["usage_at_least_90_percent"] == (aetk[-1]["usage"] >= 0.9)
    assert "taming VQGAN" in res["labels"]["reference"] and "codes used" in res["labels"]["aetk"]
    assert res["setting"]["reference_lr"] == pytest.approx(4.5e-6 * cfg.train.batch_size)
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000


def test_a_decaying_schedule_is_fitted_to_the_budget(tmp_path, tiny_config, photo_folders, monkeypatch):
    """A wsd recipe's decay ends as the budget does, whatever the CPU's speed: the probe fits max_steps, and
    when the machine slows down after it (here every race step takes twice the probe's time) the race
    re-fits the step count, so the cool-down still runs to its end inside the budget instead of being cut off."""
    from eval.bench import quality

    cfg = tiny_config(tmp_path / "run", f"data.path={photo_folders / 'train'}",
                      f"data.val_path={photo_folders / 'val'}", "data.resolution=32", "train.lr=2e-3",
                      "train.mixed_precision=no", "train.max_steps=100000", "train.lr_schedule=wsd",
                      "train.warmup_steps=2")
    slow = {"s": 0.0}

    class SlowingTrainer(quality.Trainer):
        def step(self, micro_batches):
            time.sleep(slow["s"])
            return super().step(micro_batches)

    def fit_then_slow(*args, **kwargs):
        run, fitted = probe(*args, **kwargs)
        slow["s"] = fitted["s_per_step"]
        return run, fitted

    probe = quality.fit_schedule
    monkeypatch.setattr(quality, "Trainer", SlowingTrainer)
    monkeypatch.setattr(quality, "fit_schedule", fit_then_slow)
    monkeypatch.setattr(quality, "REFIT_EVERY", 5)
    res = bench_quality(cfg, budget_s=6.0, evals=2, val_n=12, fit_n=30, out_dir=tmp_path / "out", only=("aetk",))
    fitted, aetk = res["setting"]["aetk_schedule_fitted"], res["curves"]["aetk"]
    assert res["setting"]["aetk_lr_schedule"] == "wsd"
    assert fitted["max_steps"] == int(0.97 * 6.0 / fitted["s_per_step"]) < 100000
    # The slower steps were seen and the plan shrank; the race then ran its whole cool-down, ending at the
    # re-fitted step (or, if these tiny steps jitter past the 3% margin, at the budget a few steps short).
    assert fitted["refits"] and fitted["refits"][-1] < 0.7 * fitted["max_steps"]
    assert fitted["ran_steps"] == aetk[-1]["step"] and aetk[-1]["train_s"] <= 6.0 + 0.5
    assert aetk[-1]["step"] == fitted["refits"][-1] or aetk[-1]["train_s"] >= 6.0
    assert aetk[-1]["step"] >= 0.9 * fitted["refits"][-1]
    assert not (tmp_path / "out" / "quality.partial.json").exists()  # a finished race leaves no partial file
    # A budget too short for the warm-up and the decay is refused before the race, naming both.
    with pytest.raises(ValueError, match="budget fits only .* steps .* too few for the recipe's wsd schedule"):
        bench_quality(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup_steps=10**6 // 2,
                                                                          max_steps=10**6)),
                      budget_s=1.0, evals=1, val_n=12, fit_n=30, out_dir=tmp_path / "out2", only=("aetk",))


def test_an_interrupted_race_keeps_the_finished_side(tmp_path, tiny_config, photo_folders, monkeypatch):
    import json

    from eval.bench import quality

    cfg = tiny_config(tmp_path / "run", f"data.path={photo_folders / 'train'}",
                      f"data.val_path={photo_folders / 'val'}", "data.resolution=32", "train.mixed_precision=no")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C half-way through the reference's side

    monkeypatch.setattr(quality, "_reference_curve", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_quality(cfg, budget_s=2.0, evals=1, val_n=12, fit_n=30, out_dir=tmp_path / "out")
    kept = json.loads((tmp_path / "out" / "quality.partial.json").read_text())
    assert list(kept["curves"]) == ["aetk"] and kept["curves"]["aetk"][-1]["step"] == cfg.train.max_steps
    assert kept["pca"]["psnr"] > 0
