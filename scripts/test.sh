#!/usr/bin/env bash
# Set up .venv (if needed), lint (ruff, configured in pyproject.toml) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# Two workers with one OpenMP thread each (tests/conftest.py): a third of the suite's time is one-threaded
# (starting processes, importing torch), so this keeps both cores busy; whole files go to one worker, so a
# module's fixtures are built once. AETK_TEST_WORKERS=0 runs in one process.
workers=${AETK_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
