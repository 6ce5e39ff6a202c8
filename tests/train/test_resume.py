"""Resuming is safe: a recipe edited in a key that cannot change is refused (config.yaml stays what
ran), a damaged newest checkpoint falls back to the newest intact one, and nothing pickled or
altered is loaded."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from helpers import tiny_overrides

from tokenizers_ae.pretrained import COMPLETE, checkpoint_files
from train.checkpoint import CheckpointError
from train.config import ConfigError
from train.recipe import config_from_dict
from train.run import train

EXTRA = ["train.checkpoint_every=2", "train.keep_checkpoints=5", "train.mixed_precision=no"]


def cfg(out, *extra):
    return config_from_dict({}, tiny_overrides(out, *EXTRA, *extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("resume") / "run"
    train(cfg(out, "train.max_steps=4")).close()
    return out


def copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_a_recipe_edited_in_a_fixed_key_is_refused_and_config_yaml_stays_what_ran(run, tmp_path):
    out = copy(run, tmp_path)
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as e:
        train(cfg(out, "train.max_steps=6", "train.lr=5e-2"))
    msg = str(e.value)
    assert "train.lr: 0.001 -> 0.05" in msg and "use resume=never or a new output_dir" in msg
    assert (out / "config.yaml").read_text() == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]  # nothing trained


@pytest.mark.parametrize("flags, resumes", [("avx512f avx512_bf16", True), ("avx2 fma", False)])
def test_a_bf16_run_resumes_under_auto_where_auto_is_bf16(tmp_path, monkeypatch, flags, resumes):
    """The recipes moved from `bf16` to `auto`: a run begun with the old recipe resumes where auto means
    bf16 (nothing that ran changes), and is refused, naming what ran and what was asked, where it means fp32."""
    from tokenizers_ae import precision

    monkeypatch.setattr(precision, "cpuinfo", lambda: f"model name\t: CPU\nflags\t\t: fpu {flags}\n")
    out = tmp_path / "run"
    first = ["train.checkpoint_every=1", "train.max_steps=1"]
    train(config_from_dict({}, tiny_overrides(out, *first, "train.mixed_precision=bf16"))).close()
    again = config_from_dict({}, tiny_overrides(out, *first, "train.max_steps=2", "train.mixed_precision=auto"))
    if resumes:
        trainer = train(again)
        assert trainer.step_idx == 2 and trainer.accelerator.mixed_precision == "bf16"
        trainer.close()
    else:
        with pytest.raises(ConfigError, match=r"train.mixed_precision: 'bf16' -> 'no' \(asked: 'bf16' -> 'auto'\)"):
            train(again)


def test_max_steps_may_change_and_config_yaml_records_it(run, tmp_path):
    out = copy(run, tmp_path)
    train(cfg(out, "train.max_steps=6")).close()
    assert "max_steps: 6" in (out / "config.yaml").read_text()
    assert (out / "checkpoints/step-6").is_dir()


@pytest.mark.parametrize("damage", ["truncate", "garble_header", "flip_bytes"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(run, tmp_path, caplog, damage):
    out = copy(run, tmp_path)
    f = out / "checkpoints/step-4/model.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garble_header":
        data[8:40] = b"{" * 32
    else:
        data[-100:] = bytes(b ^ 0xFF for b in data[-100:])
    f.write_bytes(bytes(data))
    trainer = train(cfg(out, "train.max_steps=4"))
    assert trainer.step_idx == 4  # resumed at step 2 and trained 2 more
    trainer.close()
    assert any("skipping checkpoint step-4" in r.getMessage() and "model.safetensors" in r.getMessage()
               for r in caplog.records)
    assert (out / "checkpoints/step-4.damaged").is_dir()  # kept for inspection, out of the rotation
    assert (out / "checkpoints/step-4/COMPLETE").is_file()  # the new step 4


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(run, tmp_path):
    out = copy(run, tmp_path)
    for step in (2, 4):
        (out / f"checkpoints/step-{step}/extra.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train(cfg(out, "train.max_steps=4"))


def test_checkpoints_hold_no_pickled_random_state(run):
    files = sorted(p.name for p in (run / "checkpoints/step-4").iterdir())
    assert "rng_state_0.safetensors" in files and not [f for f in files if f.endswith(".pkl")]
    record = json.loads((run / "checkpoints/step-4" / COMPLETE).read_text())
    assert record["step"] == 4 and "model.safetensors" in record["files"]


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/aetk-pwned", "w"))


def test_a_pickle_payload_is_refused_even_with_a_forged_complete_marker(run, tmp_path):
    """An altered file fails its checksum; an attacker who also rewrites COMPLETE still meets
    `torch.load(weights_only=True)`, and no random state is unpickled at all."""
    from train.loop import Trainer

    ckpt = copy(run, tmp_path) / "checkpoints/step-4"
    with open(ckpt / "optimizer.bin", "wb") as f:
        pickle.dump({"state": _Evil()}, f)
    trainer = Trainer(cfg(tmp_path / "new", "train.max_steps=4", f"resume={ckpt}"))
    with pytest.raises(CheckpointError, match="refusing to load .*optimizer.bin is 63 bytes"):
        trainer.maybe_resume()
    (ckpt / COMPLETE).write_text(json.dumps({"step": 4, "files": checkpoint_files(ckpt)}))  # forged
    with pytest.raises(CheckpointError, match="refusing to load"):
        trainer.maybe_resume()
    trainer.close()
    import os

    assert not os.path.exists("/tmp/aetk-pwned")


def test_resume_after_an_architecture_change_is_one_clear_error(run, tmp_path):
    out = copy(run, tmp_path)
    with pytest.raises(ConfigError, match="model.latent_channels: 2 -> 3"):
        train(cfg(out, "train.max_steps=6", "model.latent_channels=3"))
    trainer = None
    from train.loop import Trainer

    try:  # resume=PATH to another run's checkpoint with another architecture: named, one line
        trainer = Trainer(cfg(tmp_path / "other", "model.latent_channels=3", "output_dir=" + str(tmp_path / "o"),
                              f"resume={out / 'checkpoints/step-4'}"))
        with pytest.raises(ConfigError, match="cannot resume"):
            trainer.maybe_resume()
    finally:
        if trainer is not None:
            trainer.close()


def test_resume_path_that_does_not_exist(tmp_path):
    from train.loop import Trainer

    trainer = Trainer(cfg(tmp_path / "run", f"resume={tmp_path / 'nope'}"))
    with pytest.raises(CheckpointError, match="nope: no such checkpoint directory"):
        trainer.maybe_resume()
    trainer.close()


def test_random_state_is_restored_from_safetensors(run, tmp_path):
    """The generators after a resume are the ones saved, not the ones the new process seeded."""
    from train.checkpoint import rng_state, set_rng_state

    saved = rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(saved)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_loading_a_run_skips_a_checkpoint_whose_files_were_cut(run, tmp_path, caplog):
    """`aetk.load` (export, eval, encode) on a run directory: a truncated newest checkpoint is
    skipped with a warning naming the file, and the newest intact one is loaded."""
    import aetk
    from tokenizers_ae.pretrained import locate

    out = copy(run, tmp_path)
    f = out / "checkpoints/step-4/extra.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert locate(out).path.name == "step-2"
    assert any("step-4" in r.getMessage() and "extra.safetensors" in r.getMessage() for r in caplog.records)
    assert aetk.load(out).encode(torch.rand(1, 3, 16, 16) * 2 - 1).shape[0] == 1


WSD = ["train.lr_schedule=wsd", "train.decay_fraction=0.25", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def wsd_run(tmp_path_factory):
    """A finished 8-step wsd run (plateau to step 6, then a 2-step cool-down), checkpoints at 2, 4, 6, 8."""
    out = tmp_path_factory.mktemp("resume-wsd") / "run"
    train(cfg(out, *WSD, "train.max_steps=8")).close()
    return out


def test_a_wsd_run_is_lengthened_on_its_plateau_with_no_jump_in_the_rate(wsd_run, tmp_path):
    """A long run extended across sessions: resumed at step 4 (on the plateau under 8 and 12 steps), it
    follows the 12-step plan exactly: plateau to step 9, then the 1-sqrt cool-down over 3 steps to 0."""
    from train.loop import Trainer

    trainer = Trainer(cfg(tmp_path / "longer", *WSD, "train.max_steps=12",
                          f"resume={wsd_run / 'checkpoints/step-4'}"))
    try:
        trainer.maybe_resume()
        assert trainer.step_idx == 4
        lrs = [trainer.step(trainer.next_micro_batches())["lr"] for _ in range(8)]
    finally:
        trainer.close()
    want = [1, 1, 1, 1, 1, 1 - (1 / 3) ** 0.5, 1 - (2 / 3) ** 0.5, 0]
    assert lrs == pytest.approx([1e-3 * w for w in want], abs=1e-9)


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_a_new_length_that_would_make_the_rate_jump_is_refused_before_anything_trains(wsd_run, tmp_path, schedule):
    """A cooled-down wsd run lengthened would re-warm from 0 to the full rate, a cosine run stretched
    mid-way would jump up: one error naming both rates and what to do; config.yaml and the checkpoints
    stay as they were."""
    if schedule == "wsd":
        out = copy(wsd_run, tmp_path)
        extra, ckpt, rates = WSD, "step-8", "from 0 to 0.001"
    else:
        out = tmp_path / "cosine"
        extra, ckpt = ["train.lr_schedule=cosine", "train.lr=1e-3"], "step-2"
        train(cfg(out, *extra, "train.max_steps=4", "train.checkpoint_every=2")).close()
        shutil.rmtree(out / "checkpoints/step-4")  # as if stopped at step 2 of 4: cosine rate 0.0005
        rates = "from 0.0005 to 0.00075"
    before = (out / "config.yaml").read_text()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ConfigError) as e:
        train(cfg(out, *extra, "train.max_steps=12" if schedule == "wsd" else "train.max_steps=6"))
    msg = str(e.value)
    assert f"resumed step {ckpt.removeprefix('step-')} {rates}" in msg and "train.lr_schedule=wsd" in msg
    assert (out / "config.yaml").read_text() == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == names
