#!/usr/bin/env bash
# Idempotent set-up: a .venv with torch 2.13.0 (CPU wheel) installed FIRST, then gentransfer in editable
# mode with its dev extra. Fast when already set up. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.gentransfer-setup
want=$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
pipq() { .venv/bin/python -m pip install --disable-pip-version-check -q "$@"; }
# torch first: with torch 2.13.0 present, dependants (zuko, nflows, torchdiffeq) install nothing more of it.
pipq "torch==2.13.0"
pipq -e ".[dev]"
echo "$want" > "$stamp"
