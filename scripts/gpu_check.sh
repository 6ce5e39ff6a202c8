#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (about 10 minutes on one H200):
#   1. a few training steps of each family on CUDA in fp32, bf16 and fp16 (validation PSNR and wall time
#      per precision, the same seed: reduced precision must land where fp32 does);
#   2. tiled encode/decode of large images (aetk's exact tiles vs untiled vs diffusers' tiling);
#   3. the train-step benchmark against the taming-style reference loop;
#   4. --precision auto: whole-VAE fp32 upcast vs fp16 with only the overflowing modules in fp32;
#   5. the video VAE against diffusers' AutoencoderKLWan at 256x256x33.
# Every result is a JSON file under $OUT (default runs/gpu-check); the log goes beside them.
#
# The device image has torch but not diffusers, lpips and the rest: carry them as wheels. Here, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers accelerate lpips piq torchmetrics safetensors huggingface_hub av ... (pyproject's list)
# and run it with carry [".whl"]:  bash scripts/gpu_check.sh
# On a machine without CUDA it runs the same steps at toy sizes on the CPU (GPU_CHECK_DRY=1 forces that),
# which is how the script itself is checked.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
AETK="$PY -m aetk"
if [ "${GPU_CHECK_DRY:-0}" = 1 ] || ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DRY=1; echo "no CUDA (or GPU_CHECK_DRY=1): toy sizes on the CPU"
else
  DRY=0; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
failed=0
step() {  # step NAME COMMAND...: run, keep going on failure, time it
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok in $((SECONDS - t0)) s"; else
    echo "   FAILED ($((SECONDS - t0)) s); last lines:"; tail -5 "$OUT/$name.log"; failed=$((failed + 1)); fi
}

if [ $DRY = 1 ]; then STEPS=4; PRECS=no,bf16; else STEPS=300; PRECS=no,bf16,fp16; fi
TINY="train.eval_every=$STEPS train.checkpoint_every=100000 train.log_every=50 train.progress=false"
# 1. each family, per precision
# (the recipe's overrides come right after it, before the options)
precision() {  # precision NAME RECIPE [OVERRIDES...]
  local name=$1 recipe=$2; shift 2
  step "$name" $AETK bench precision "$recipe" $TINY "$@" --steps $STEPS --precisions $PRECS \
    --json "$OUT/precision-$name.json"
}
precision kl_vae configs/kl-f4-tiny.yaml
precision vq_vae configs/vq-f4-tiny.yaml
precision video_vae configs/video-tiny.yaml data.path=builtin:moving-mnist data.val_path=builtin:moving-mnist
# The codec's recipe reads a folder of speech; here, seeded chirps in noise (a precision check, not quality).
$PY - <<'PYEOF'
import numpy as np, soundfile as sf, pathlib
rng = np.random.default_rng(0)
for split, n in (("train", 64), ("val", 8)):
    d = pathlib.Path("runs/gpu-check-audio") / split
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t = np.arange(24000 * 2) / 24000
        f0 = rng.uniform(100, 800)
        y = 0.3 * np.sin(2 * np.pi * (f0 + rng.uniform(-50, 50) * t) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(d / f"{i:03d}.wav", y.astype(np.float32), 24000)
PYEOF
precision soundstream configs/codec-tiny.yaml data.path=runs/gpu-check-audio/train data.val_path=runs/gpu-check-audio/val
precision diffusion_prior configs/pixel-digits.yaml
# 2. tiled encode / decode of large images
if [ $DRY = 1 ]; then SIZES="128"; TILE=64; else SIZES="1024 2048"; TILE=512; fi
step tiling $AETK bench tiling --sizes $SIZES --tile $TILE --json "$OUT/tiling.json"
# 3. the train-step benchmark (aetk vs the taming-style reference loop)
step train_step $AETK bench train-step configs/bench-kl-64.yaml --reference --steps $([ $DRY = 1 ] && echo 1 || echo 20) \
  --json "$OUT/train-step.json"
# 4. fp16 upcast: whole VAE in fp32 vs only the overflowing modules
if [ $DRY = 1 ]; then UP="--size 16 --repeats 1 --device cpu"; else UP="--size 512 --repeats 10 --device cuda"; fi
step upcast $AETK bench upcast $UP --json "$OUT/upcast.json"
# 5. the video VAE against diffusers' AutoencoderKLWan
if [ $DRY = 1 ]; then VID="--frames 5 --size 32 --base-dim 8"; else VID="--frames 33 --size 256"; fi
step video $AETK bench video $VID --json "$OUT/video.json"

echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[ $failed = 0 ] || { echo "$failed step(s) failed"; exit 1; }
