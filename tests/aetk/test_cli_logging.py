"""Under torchrun every process runs the CLI; the log is printed once, by the first process."""

import sys

import pytest
from helpers import REPO, run_cli, tiny_overrides

# 8 norm groups on the tiny model's 8-channel level: one channel per group, so the kl_vae family logs its
# instance-norm warning while it builds the model, in every process.
ONE_CHANNEL_GROUPS = ["model.norm_num_groups=8", "train.max_steps=1", "train.eval_every=1", "train.checkpoint_every=1",
                      "train.mixed_precision=no"]


@pytest.mark.slow
def test_two_processes_log_each_line_once(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "aetk"]
    proc = run_cli(["train", str(REPO / "configs/kl-f4-tiny.yaml"), *tiny_overrides(tmp_path, *ONE_CHANNEL_GROUPS)],
                   launcher=torchrun, env={"OMP_NUM_THREADS": "1"})
    warnings = [line for line in proc.stderr.splitlines() if "one channel per group" in line]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("WARNING aetk.train: ")
    assert "[rank 1]" not in proc.stderr
    assert (tmp_path / "checkpoints/step-1/rng_state_1.safetensors").is_file()  # two processes really ran
