"""`aetk bench quality`: a fair race (same initial weights, same held-out scoring, the clock paused for
evaluations) between aetk's trainer and latent-diffusion's loop, with patch PCA as the floor."""

import time

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image
from skimage import data as skdata

from eval.bench.quality import LDM_BASE_LR, _race, bench_quality, reference_for, time_to_reach


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
    points = _race(step, evaluate, budget_s=60.0, evals=2, name="t", max_steps=5)
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
    t = res["targets"]
    assert t["reference_final_psnr"] == ref[-1]["psnr"]
    assert t["half_the_time"] == (t["time_ratio"] is not None and t["time_ratio"] <= 0.5)
    assert t["beats_pca_psnr"] == (aetk[-1]["psnr"] > res["pca"]["psnr"])
    assert (tmp_path / "out" / "quality.png").stat().st_size > 10_000


def test_reference_starts_from_the_recipes_weights(tmp_path, tiny_config):
    from train.families import family

    cfg = tiny_config(tmp_path / "run")
    ref = reference_for(cfg)
    import torch

    torch.manual_seed(cfg.seed)
    ours = family(cfg.kind).build_model(cfg).vae
    assert all(torch.equal(a, b) for a, b in zip(ref.vae.state_dict().values(), ours.state_dict().values()))
    assert ref.opt_ae.param_groups[0]["betas"] == (0.5, 0.9)


def test_bench_quality_cli_says_what_is_wrong_in_one_line(tmp_path):
    common = ["bench", "quality", "configs/kl-f4-tiny.yaml", "--out", str(tmp_path / "q"), "--minutes", "0.01"]
    run = run_cli(common, check=False)  # builtin data: no held-out folder
    assert run.returncode != 0 and "data.val_path" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = run_cli(["bench", "quality", "configs/codec-tiny.yaml", "--out", str(tmp_path / "q")], check=False)
    assert run.returncode != 0 and "KL-VAE" in run.stderr and "Traceback" not in run.stderr
    run = run_cli([*common[:3], "--minutes", "0"], check=False)
    assert run.returncode != 0 and "--minutes" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "q" / "quality.json").exists()
