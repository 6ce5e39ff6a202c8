"""End to end through the CLI: outputs, exact resume after SIGKILL, atomic checkpoints, safety."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_cli, tiny_overrides
from safetensors.torch import load_file

CFG = str(REPO / "configs/kl-f4-tiny.yaml")
EXTRA = ["train.checkpoint_every=2", "train.keep_checkpoints=5", "loss.disc_start=2"]


def train_cli(out: Path, *extra: str, env=None, check=True):
    return run_cli(["train", CFG, *tiny_overrides(out, *EXTRA, *extra)], env=env, check=check)


def state_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in ("model.safetensors", "model_1.safetensors", "extra.safetensors"):
        out.update({f"{f}:{k}": v for k, v in load_file(ckpt / f).items()})
    for f in ("optimizer.bin", "optimizer_1.bin"):
        st = torch.load(ckpt / f, weights_only=True)
        for pid, s in st["state"].items():
            for k, v in s.items():
                out[f"{f}:{pid}:{k}"] = torch.as_tensor(v)
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train_cli(out)
    return out


def test_run_directory_contents(reference_run):
    from diffusers import AutoencoderKL

    run = reference_run
    assert (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    grids = sorted((run / "samples").glob("recon-*.png"))
    assert [g.name for g in grids] == ["recon-0000003.png", "recon-0000006.png"]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "generator/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all("disc/loss" in r for r in train_rows if r["step"] > 2)  # disc_start=2: steps 3.. are index 2..
    assert not any("disc/loss" in r for r in train_rows if r["step"] <= 2)
    evals = [r for r in rows if "eval/psnr" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(r["eval/psnr"] > 0 for r in evals)
    assert list((run / "logs").rglob("events.out.tfevents*")), "TensorBoard events"
    # The exported model is a working diffusers AutoencoderKL holding the EMA weights.
    vae = AutoencoderKL.from_pretrained(run / "model")
    ema = load_file(run / "checkpoints/step-6/extra.safetensors")
    for name, p in vae.named_parameters():
        assert torch.equal(p.detach(), ema[f"ema.module.vae.{name}"]), name


def test_resume_after_sigkill_is_exact(reference_run, tmp_path):
    out = tmp_path / "killed"
    proc = train_cli(out, env={"AETK_FAULT": "kill_at_step:3"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "checkpoints/step-4").exists()
    train_cli(out)  # resume=auto
    a, b = state_tensors(reference_run / "checkpoints/step-6"), state_tensors(out / "checkpoints/step-6")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kill_while_saving_never_leaves_a_loadable_half_checkpoint(reference_run, tmp_path):
    out = tmp_path / "killed-in-save"
    proc = train_cli(out, env={"AETK_FAULT": "kill_in_save:4"}, check=False)
    assert proc.returncode == -9
    ckpts = out / "checkpoints"
    assert (ckpts / ".tmp-step-4").is_dir() and not (ckpts / "step-4").exists()
    from tokenizers_ae.pretrained import latest_checkpoint

    assert latest_checkpoint(ckpts).name == "step-2"
    train_cli(out)
    a, b = state_tensors(reference_run / "checkpoints/step-6"), state_tensors(ckpts / "step-6")
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickled_checkpoint_that_runs_code_is_refused(reference_run, tmp_path, tiny_config):
    from train.checkpoint import CheckpointError
    from train.loop import Trainer

    ckpt = tmp_path / "step-6"
    shutil.copytree(reference_run / "checkpoints/step-6", ckpt)
    evil = _Evil()
    evil.target = str(tmp_path / "pwned")
    with open(ckpt / "optimizer.bin", "wb") as f:
        pickle.dump({"state": evil}, f)
    from train.recipe import load_config

    trainer = Trainer(load_config(CFG, tiny_overrides(tmp_path / "run", *EXTRA, f"resume={ckpt}")))
    with pytest.raises(CheckpointError, match="refusing to load"):
        trainer.maybe_resume()
    assert not (tmp_path / "pwned").exists()
    trainer.close()
