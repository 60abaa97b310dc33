#!/usr/bin/env bash
# Creates .venv and installs vita-serve with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch is pinned in pyproject.toml (torch==2.13.0, the CPU wheel on these machines) so that pip never
# pulls a multi-GB CUDA build; for GPUs see docs/DEPLOY.md.
python -m pip install --quiet -e '.[dev]'
