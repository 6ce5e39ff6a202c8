#!/usr/bin/env bash
# Set up .venv (if needed) and train a tiny KL-VAE on the built-in photos: writes a reconstruction
# grid, metrics and an exported diffusers model under runs/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/aetk train configs/kl-f4-tiny.yaml output_dir=runs/quickstart "$@"
