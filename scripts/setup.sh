#!/usr/bin/env bash
# Create (or reuse) the project venv at .venv and install aetk into it.
# torch and torchvision are installed first as a matched pair: on CPU-only machines PyPI's
# torchvision does not import beside other torch builds (`torchvision::nms`), and lpips needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PAIR=${AETK_TORCH_PAIR:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.aetk-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] installing $TORCH_PAIR"
.venv/bin/pip install -q $TORCH_PAIR 2> >(grep -v "is ignored: it is neither" >&2)
echo "[setup] installing aetk and its dependencies"
.venv/bin/pip install -q -e ".[test,speech]" $TORCH_PAIR 2> >(grep -v "is ignored: it is neither" >&2)
echo "$want" > "$stamp"
echo "[setup] done"
