#!/usr/bin/env bash
# Set up .venv (if needed), train a small KL-VAE for about 5 minutes and score it on held-out images beside
# JPEG and patch PCA. Trains on the real-photo corpus (data/photos/64, from scripts/make_photos.py) when it
# exists, else on the built-in photos. Writes a reconstruction grid, metrics, an exported diffusers model and
# eval.json under runs/quickstart/ (its figures, comparison.png among them, in runs/quickstart/eval-files/).
# Extra arguments are recipe overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
photos=data/photos/64
earlier=$([[ -d runs/quickstart ]] && echo yes || true)
train() {
  if ! .venv/bin/aetk train "$@"; then
    # The trainer refuses to resume a run of another recipe; say how to start over from this script.
    [[ -n $earlier ]] && echo "quickstart: runs/quickstart holds an earlier run; start it over with:" \
      "bash scripts/quickstart.sh resume=never" >&2
    exit 1
  fi
}
if [[ -d $photos/train && -d $photos/val ]]; then
  echo "quickstart: training on the photo corpus in $photos"
  # 800 steps of the photo recipe: about 5 minutes on 2 AVX-512 CPU cores, 9 on 2 AVX2 ones.
  train configs/photo-kl-f4-64.yaml output_dir=runs/quickstart train.max_steps=800 \
    train.checkpoint_every=400 "$@"
  eval_args=(--data "$photos/val" --fit-data "$photos/train" --resolution 64)
else
  echo "quickstart: no photo corpus in $photos (build one with: .venv/bin/python scripts/make_photos.py --sizes 64);" \
       "training on the built-in photos"
  train configs/kl-f4-tiny.yaml output_dir=runs/quickstart "$@"
  eval_args=(--data builtin:skimage --resolution 32)
fi
.venv/bin/aetk eval runs/quickstart "${eval_args[@]}" --n 64 --baseline jpeg --baseline pca \
  --json runs/quickstart/eval.json
