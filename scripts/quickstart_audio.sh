#!/usr/bin/env bash
# Audio quick start: set up .venv (if needed), build the offline sample audio (espeak-ng speech +
# Tux Paint clips, installed from Debian when missing and we are root), train the tiny 24 kHz codec
# (configs/codec-tiny.yaml), then compress / decompress a held-out clip and evaluate every bitrate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v espeak-ng >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[quickstart-audio] installing espeak-ng (and Tux Paint's spoken stamps, opus-tools) from Debian"
    apt-get install -y -q espeak-ng tuxpaint-stamps-default opus-tools >/dev/null || apt-get install -y -q espeak-ng >/dev/null
  else
    echo "[quickstart-audio] needs espeak-ng: sudo apt-get install espeak-ng" >&2; exit 2
  fi
fi
[ -d data/audio24k/train ] || .venv/bin/python scripts/make_audio.py data/audio24k
.venv/bin/aetk train configs/codec-tiny.yaml "$@"
clip=$(ls data/audio24k/val/*.wav | head -1)
.venv/bin/aetk codec compress "$clip" runs/codec-tiny/example.aetk --model runs/codec-tiny --kbps 6
.venv/bin/aetk codec decompress runs/codec-tiny/example.aetk runs/codec-tiny/example-6kbps.wav --model runs/codec-tiny
.venv/bin/aetk eval runs/codec-tiny --data data/audio24k/val --json runs/codec-tiny/eval.json --out-dir runs/codec-tiny/eval
