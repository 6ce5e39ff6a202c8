"""Trainer behaviour in-process: bad data, non-finite guard, mixed precision, accumulation."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from train.config import ConfigError
from train.loop import NonFiniteLossError, Trainer
from train.run import train


@pytest.fixture
def dirty_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "sub" / f"ok{i}.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "full.jpg", quality=95)
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "garbage.png").write_bytes(b"not an image at all" * 10)
    (root / "empty.jpg").write_bytes(b"")
    (root / "full.jpg").unlink()
    return root


def test_corrupt_files_are_skipped_warned_once_and_counted(dirty_folder, tmp_path, tiny_config, caplog):
    cfg = tiny_config(tmp_path / "run", f"data.path={dirty_folder}", "train.max_steps=4",
                      "train.batch_size=8", "train.eval_every=100", "train.checkpoint_every=100")
    with caplog.at_level(logging.WARNING):
        trainer = train(cfg)
    bad = {"truncated.jpg", "garbage.png", "empty.jpg"}
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["bad_items"] == 3 and {p.split("/")[-1] for p in summary["bad_paths"]} == bad
    assert summary["precision"] == {"asked": "auto", "ran": trainer.accelerator.mixed_precision}
    skip_msgs = [r.getMessage() for r in caplog.records if "skipping unreadable item" in r.getMessage()]
    assert len(skip_msgs) == 3  # once per file, though each was met on every pass over the data
    rows = [json.loads(l) for l in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "bad_items" in r][-1]["bad_items"] == 3
    trainer.close()


def test_dataset_without_readable_images_is_a_clear_error(tmp_path, tiny_config):
    from train.config import ConfigError

    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(ConfigError, match=f"data.path: .*{root}"):
        Trainer(tiny_config(tmp_path / "run", f"data.path={root}"))


def test_nonfinite_steps_are_skipped_then_stop_the_run(tmp_path, tiny_config):
    trainer = Trainer(tiny_config(tmp_path / "run", "train.max_nonfinite=3", "loss.disc_start=0"))
    before = {k: v.clone() for k, v in trainer.task.generator.state_dict().items()}
    good = trainer.next_micro_batches()
    nan = [{**b, "x": torch.full_like(b["x"], float("nan"))} for b in good]
    for _ in range(2):
        logs = trainer.step(nan)
        assert logs["skipped"] == 1.0
    after = trainer.task.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not change weights"
    assert trainer.step(good)["skipped"] == 0.0  # a finite step resets the count
    trainer.step(nan)
    trainer.step(nan)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps.*the input batch"):
        trainer.step(nan)
    trainer.close()


def test_nonfinite_guard_names_the_module(tmp_path, tiny_config):
    trainer = Trainer(tiny_config(tmp_path / "run", "train.mixed_precision=no"))
    with torch.no_grad():
        trainer.task.generator.autoencoder.vae.decoder.conv_in.weight.fill_(float("inf"))
    logs = trainer.step(trainer.next_micro_batches())
    assert logs["skipped"] == 1.0
    assert trainer.last_nonfinite == "module autoencoder.vae.decoder.conv_in"
    trainer.close()


def test_bf16_autocast_runs_on_cpu(tmp_path, tiny_config):
    trainer = Trainer(tiny_config(tmp_path / "run", "train.mixed_precision=bf16", "loss.disc_start=0"))
    dtypes = []
    conv_out = trainer.task.generator.autoencoder.vae.decoder.conv_out
    conv_out.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    logs = trainer.step(trainer.next_micro_batches())
    assert dtypes == [torch.bfloat16]
    assert all(np.isfinite(v) for v in logs.values())
    assert next(trainer.task.generator.parameters()).dtype == torch.float32  # weights stay fp32
    trainer.close()


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_config):
    # Before disc_start: with the GAN on, the adaptive weight is measured per micro-batch (as in
    # taming), so accumulation is then close to, not equal to, a big batch.
    def run(accum):
        t = Trainer(tiny_config(tmp_path / f"run{accum}", f"train.grad_accum={accum}", "train.mixed_precision=no",
                                "loss.disc_start=100", "train.max_grad_norm=null"))
        for _ in range(2):
            t.step(t.next_micro_batches())
        state = {k: v.clone() for k, v in t.task.generator.state_dict().items()}
        t.close()
        return state

    a, b = run(1), run(2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, tiny_config):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Trainer(tiny_config(tmp_path / "run", "train.mixed_precision=fp16"))


def test_init_from_a_diffusers_vae_directory(tmp_path, tiny_config):
    from tokenizers_ae.models.kl_vae import build_autoencoder_kl

    torch.manual_seed(123)
    src = build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=2)
    src.save_pretrained(tmp_path / "vae")
    # The directory's architecture wins over the recipe's model keys.
    trainer = Trainer(tiny_config(tmp_path / "run", f"model.init_from={tmp_path / 'vae'}",
                                  "model.block_out_channels=[16,32]", "model.norm_num_groups=8"))
    vae = trainer.task.generator.autoencoder.vae
    assert vae.training
    for (n, a), b in zip(src.named_parameters(), vae.parameters()):
        assert torch.equal(a, b), n
    trainer.step(trainer.next_micro_batches())
    assert not torch.equal(src.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    trainer.close()


def test_init_from_a_missing_directory_names_the_key(tmp_path, tiny_config):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="model.init_from"):
        Trainer(tiny_config(tmp_path / "run", f"model.init_from={tmp_path / 'nope'}"))


@pytest.mark.parametrize("flags, runs", [("avx2 fma", "no"), ("avx512f amx_bf16", "bf16")])
def test_auto_precision_trains_bf16_only_where_the_cpu_has_it(tmp_path, tiny_config, monkeypatch, caplog, flags, runs):
    """The default (and the recipes') `auto`: emulated bf16 trained 4x slower than fp32, so a CPU without
    AMX or AVX512-BF16 trains fp32, and the log says which ran and why."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: f"model name\t: CPU\nflags\t\t: fpu {flags}\n")
    with caplog.at_level(logging.INFO, logger="aetk.train"):
        trainer = Trainer(tiny_config(tmp_path / "run"))
    assert trainer.cfg.train.mixed_precision == "auto"  # the recipe as written; what ran is below
    assert trainer.accelerator.mixed_precision == trainer.precision == runs
    said = [r.getMessage() for r in caplog.records if "mixed_precision=auto" in r.getMessage()]
    assert said == [f"train.mixed_precision=auto runs {'fp32' if runs == 'no' else 'bf16'} here "
                    f"({'no native bf16 on this CPU' if runs == 'no' else 'native bf16'})"]
    assert not any("slower than fp32" in r.getMessage() for r in caplog.records)  # no warning for auto
    trainer.close()


def test_a_run_that_fails_frees_accelerate_for_the_next_one(tmp_path, tiny_config, monkeypatch):
    """An error inside `train` (here in the periodic eval) must not leave accelerate's process-wide
    state behind: the next run in the same process (a notebook, the test session) may pick another
    precision instead of failing with 'AcceleratorState has already been initialized'."""
    def broken_eval(*args, **kwargs):
        raise RuntimeError("eval broke")

    monkeypatch.setattr(Trainer, "evaluate", broken_eval)
    with pytest.raises(RuntimeError, match="eval broke"):
        train(tiny_config(tmp_path / "a", "train.mixed_precision=bf16", "train.max_steps=1"))
    trainer = Trainer(tiny_config(tmp_path / "b", "train.mixed_precision=no"))
    assert trainer.accelerator.mixed_precision == "no"
    trainer.close()


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_steps_ramp_every_schedule(tmp_path, tiny_config, schedule):
    # diffusers' "constant" schedule ignores num_warmup_steps: a recipe's warm-up must not vanish silently.
    cfg = tiny_config(tmp_path / schedule, f"train.lr_schedule={schedule}", "train.warmup_steps=4",
                      "train.max_steps=100", "train.lr=1e-3")
    trainer = Trainer(cfg)
    try:
        lrs = []
        for _ in range(5):
            lrs.append(trainer.step(trainer.next_micro_batches())["lr"])
    finally:
        trainer.close()
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3], rel=1e-6)
    assert lrs[4] == pytest.approx(1e-3, rel=1e-3)


def test_wsd_schedule_holds_then_cools_down_to_zero(tmp_path, tiny_config):
    """Warm-up 2, stable, then a 1-sqrt decay over the last 40% of 10 steps, ending at 0."""
    cfg = tiny_config(tmp_path, "train.lr_schedule=wsd", "train.warmup_steps=2", "train.decay_fraction=0.4",
                      "train.max_steps=10", "train.lr=1e-3")
    trainer = Trainer(cfg)
    try:
        lrs = [trainer.step(trainer.next_micro_batches())["lr"] for _ in range(10)]
    finally:
        trainer.close()
    want = [0.5, 1, 1, 1, 1, 1, 1 - 0.25**0.5, 1 - 0.5**0.5, 1 - 0.75**0.5, 0]
    assert lrs == pytest.approx([1e-3 * w for w in want], abs=1e-9)


def test_replan_moves_a_wsd_cool_down_only_while_the_rate_is_on_its_plateau(tmp_path, tiny_config):
    """`aetk bench quality` re-fits max_steps mid-race: after replan the rates are exactly those of a run
    planned for the new length from the start; once a cool-down has begun the plan stands."""
    cfg = tiny_config(tmp_path, "train.lr_schedule=wsd", "train.warmup_steps=2", "train.decay_fraction=0.4",
                      "train.max_steps=10", "train.lr=1e-3")
    trainer = Trainer(cfg)
    try:
        lrs = [trainer.step(trainer.next_micro_batches())["lr"] for _ in range(3)]
        assert trainer.replan(15)  # decay now starts at step 9, not 6
        lrs += [trainer.step(trainer.next_micro_batches())["lr"] for _ in range(7)]
        assert not trainer.replan(12)  # step 10 is in the new plan's cool-down (from 9): no jump
        assert not trainer.replan(30)  # nor may a longer plan lift a rate that has begun to fall
        lrs += [trainer.step(trainer.next_micro_batches())["lr"] for _ in range(5)]
        assert trainer.cfg.train.max_steps == 15
        with pytest.raises(ConfigError):
            trainer.replan(2)  # cannot hold the 2 warm-up steps and a cool-down
    finally:
        trainer.close()
    f = [1 - (k / 6) ** 0.5 for k in range(1, 7)]  # 1-sqrt over the last 6 of 15 steps
    want = [0.5, 1, 1, 1, 1, 1, 1, 1, 1, *f]
    assert lrs == pytest.approx([1e-3 * w for w in want], abs=1e-9)
    constant = tiny_config(tmp_path / "c", "train.max_steps=10")
    trainer = Trainer(constant)
    try:
        with pytest.raises(ValueError, match="wsd"):
            trainer.replan(20)
    finally:
        trainer.close()


def test_the_validation_batch_is_spread_over_the_validation_set():
    """data.val_size items evenly spaced over the set, not its first ones (a folder sorted by name is
    often sorted by kind: the video clip set's first 40 held-out clips are all digits)."""
    from tokenizers_ae.data.sources import build_image_dataset
    from train.data.loader import build_loaders
    from train.recipe import config_from_dict

    cfg = config_from_dict({"data": {"path": "builtin:digits", "resolution": 16, "val_size": 4}})
    val = build_image_dataset("builtin:digits", resolution=16, random_crop=False, random_flip=False, split="val")
    loaders = build_loaders(cfg, (val, val), rank=0, world=1, micro_batch=4)
    n = len(val)
    assert n > 8 and loaders.val_batch()["index"].tolist() == [0, n // 4, n // 2, 3 * n // 4]
