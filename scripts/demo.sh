#!/usr/bin/env bash
# Sets up, then: stack up (Redis + every service, tiny preset), one text turn, reply WAV written,
# timings printed, stack stopped. Extra arguments go to `vita demo` (e.g. --text "...").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
exec vita demo "$@"
