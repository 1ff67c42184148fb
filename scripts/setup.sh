#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the smartedit package (editable) and its test extras, at
# the exact versions of constraints.txt. Re-running it is a no-op unless setup.py or constraints.txt changed.
# Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.smartedit-installed
want=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first and on its own: the CPU wheel (torch pulled in as a dependency would be a multi-GB CUDA build)
  .venv/bin/python -m pip install --quiet -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
