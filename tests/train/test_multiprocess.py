"""Data parallelism: 2 processes with batch B/2 each end where 1 process with batch B ends."""

import sys

import pytest
import torch
from helpers import REPO, run_cli, tiny_overrides
from safetensors.torch import load_file

KL, VQ_RECIPE = str(REPO / "configs/kl-f4-tiny.yaml"), str(REPO / "configs/vq-f4-tiny.yaml")
# fp32 so the comparison measures the algorithm, not bf16 rounding; group norm in the PatchGAN so
# its statistics do not depend on the split (batch norm is per process, as in taming).
COMMON = ["train.mixed_precision=no", "loss.disc_norm=group", "loss.disc_start=2", "train.max_steps=4",
          "train.checkpoint_every=4", "train.eval_every=4", "train.lr=1e-4"]


VQ = ["model.kind=vq_vae", "model.latent_channels=4", "model.quantizer.codebook_size=32",
      "model.quantizer.kmeans_init=true", "model.quantizer.dead_code_threshold=0.5"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, model", [(KL, []), (VQ_RECIPE, VQ),
                                           (VQ_RECIPE, [*VQ, "model.quantizer.type=rvq", "model.quantizer.levels=3"])],
                         ids=["kl_vae", "vq_ema_restarts_kmeans", "rvq"])
def test_two_processes_match_one(tmp_path, recipe, model):
    # For VQ: EMA statistics, k-means initialisation and dead-code restarts must be global, so the
    # codebooks (in model.safetensors) match the one-process run too.
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(["train", recipe, *tiny_overrides(one, *COMMON, *model)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "aetk"]
    run_cli(["train", recipe, *tiny_overrides(two, *COMMON, *model)], launcher=torchrun,
                   env={"OMP_NUM_THREADS": "1"})
    # Float tolerance: summation order differs across processes, and Adam turns a rounding-level
    # difference in a near-zero gradient into up to one lr-sized step. A wrong split (other data,
    # other noise, per-process adaptive weights) moves nearly every element by ~lr instead.
    for f in ("model.safetensors", "model_1.safetensors", "extra.safetensors"):
        a, b = load_file(one / "checkpoints/step-4" / f), load_file(two / "checkpoints/step-4" / f)
        assert a.keys() == b.keys()
        if model and f != "model_1.safetensors":  # model_1 is the discriminator
            assert any("codebook" in k for k in a)
        for k in a:
            if not a[k].is_floating_point():
                assert torch.equal(a[k], b[k]), k
        diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a if a[k].is_floating_point()])
        assert diff.max() < 1e-4, f"{f}: max difference {diff.max():.3g}"
        assert (diff > 1e-6).float().mean() < 1e-3, f"{f}: {(diff > 1e-6).float().mean():.2%} elements differ"
    # It really ran two processes: each wrote its own RNG state.
    assert (two / "checkpoints/step-4/random_states_1.pkl").is_file()
    assert not (one / "checkpoints/step-4/random_states_1.pkl").exists()
