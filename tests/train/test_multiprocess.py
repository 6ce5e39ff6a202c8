"""Data parallelism: 2 processes with batch B/2 each end where 1 process with batch B ends.

The first-stage recipes run at their own settings (the VQ recipes' 1024 codes, restart threshold
0.05 and k-means with fewer rows than codes; the codec recipe's residual levels and quantizer
dropout). Both runs use one thread per process: a convolution's last bit depends on the thread
count.

What must be exact is everything aetk computes: the data split, the positional noise and every
quantizer statistic, draw and restart. Weights trained by Adam can only match to float rounding:
the all-reduced gradient of two half batches rounds differently from one batch's, and Adam turns
a rounding-level difference in a near-zero gradient into up to one lr-sized step. A codebook then
diverges through nearest-code ties (a last-bit difference in a latent picks the other of two
codes), so the quantized recipes are compared with their networks held still (lr 1e-30): their
quantizer state must then be bit-identical after k-means, EMA updates and restarts.
"""

import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import REPO, run_cli, tiny_overrides
from safetensors.torch import load_file

from tokenizers_ae.precision import cpuinfo

# fp32 so the comparison measures the algorithm, not bf16 rounding; group norm in the PatchGAN so
# its statistics do not depend on the split (batch norm is per process, as in taming).
COMMON = ["train.mixed_precision=no", "loss.disc_start=2", "train.max_steps=4", "train.checkpoint_every=4",
          "train.eval_every=4", "train.progress=false"]
PATCHGAN = ["loss.disc_norm=group"]
FROZEN = ["train.lr=1e-30", "train.warmup_steps=0"]
CASES = {
    "kl_vae": ("kl-f4-tiny", [*PATCHGAN, "train.lr=1e-4"]),
    "vq_recipe": ("vq-f4-tiny", [*PATCHGAN, "data.resolution=32", "train.batch_size=4", *FROZEN]),
    "rvq_recipe": ("vq-f4-tiny", [*PATCHGAN, "data.resolution=32", "train.batch_size=4", "model.quantizer.type=rvq",
                                  "model.quantizer.levels=3", "model.quantizer.dropout=1.0", *FROZEN]),
    "codec_recipe": ("codec-tiny", [*FROZEN]),
    "video_vae": ("video-digits", [*PATCHGAN, "train.lr=1e-4"]),
}


def overrides(out, name: str, audio) -> list[str]:
    """The recipe's own architecture and quantizer, except the KL case's tiny one; short runs."""
    recipe, extra = CASES[name]
    if recipe == "kl-f4-tiny":
        return tiny_overrides(out, *COMMON, *extra)
    if recipe == "video-digits":  # the tiny video VAE (tests/helpers.py), per-frame PatchGAN on
        return tiny_overrides(out, "model.kind=video_vae", *COMMON, *extra)
    data = [f"data.path={audio}", f"data.val_path={audio}"] if recipe == "codec-tiny" else []
    return [f"output_dir={out}", *data, "data.val_size=2", "train.log_every=1", *COMMON, *extra]


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    t = np.arange(24000) / 24000
    for i in range(4):
        sf.write(root / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t)).astype(np.float32), 24000)
    return root


# On an AVX2-only CPU (no AVX-512) the codec encoder's training-mode GEMM (conv1d_as_matmul through F.linear,
# M = batch x frames) rounds differently for a batch of 8 and two of 4 (up to 3e-7), so k-means and the EMA see
# other latents and the quantizer state splits at step 1; on AVX-512 CPUs the outputs are bit-equal and it passes.
_AVX512 = "avx512f" in (cpuinfo() or "avx512f")
CODEC_XFAIL = pytest.mark.xfail(not _AVX512, strict=False, reason="AVX2-only CPU: the codec encoder's GEMM is not "
                                "batch-invariant there, so 2 processes' latents differ from 1's in the last bit")


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=CODEC_XFAIL) if n == "codec_recipe" else n for n in CASES])
def test_two_processes_match_one(tmp_path, name, audio):
    recipe = str(REPO / "configs" / f"{CASES[name][0]}.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    env = {"OMP_NUM_THREADS": "1"}
    run_cli(["train", recipe, *overrides(one, name, audio)], env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "aetk"]
    run_cli(["train", recipe, *overrides(two, name, audio)], launcher=torchrun, env=env)
    weights = sorted(p.name for p in (one / "checkpoints/step-4").glob("*.safetensors") if "rng" not in p.name)
    assert {"model.safetensors", "extra.safetensors"} <= set(weights)
    for f in weights:
        a, b = load_file(one / "checkpoints/step-4" / f), load_file(two / "checkpoints/step-4" / f)
        assert a.keys() == b.keys()
        quantizer = [k for k in a if ".quantizer." in k or k.startswith("quantizer.")]
        # the trained model (model_1: the discriminator) of a quantized recipe holds its codebooks
        if name not in ("kl_vae", "video_vae") and f == "model.safetensors":
            assert any("codebook" in k for k in quantizer)
        for k in quantizer:  # k-means, EMA statistics, restarts: global, so exact
            assert torch.equal(a[k], b[k]), f"{f}: {k} differs"
        for k in a:
            if not a[k].is_floating_point():
                assert torch.equal(a[k], b[k]), k
        # Float tolerance: summation order differs across processes, and Adam turns a rounding-level
        # difference in a near-zero gradient into up to one lr-sized step. A wrong split (other data,
        # other noise, per-process adaptive weights) moves nearly every element by ~lr instead.
        floats = [k for k in a if a[k].is_floating_point()]
        if not floats:  # extra.safetensors of a run without weight EMA
            continue
        diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in floats])
        assert diff.max() < 1e-4, f"{f}: max difference {diff.max():.3g}"
        assert (diff > 1e-6).float().mean() < 1e-3, f"{f}: {(diff > 1e-6).float().mean():.2%} elements differ"
    # It really ran two processes: each wrote its own random-number state (safetensors, no pickle).
    assert (two / "checkpoints/step-4/rng_state_1.safetensors").is_file()
    assert not (one / "checkpoints/step-4/rng_state_1.safetensors").exists()
    assert not list((two / "checkpoints/step-4").glob("*.pkl"))
