#!/usr/bin/env bash
# Sets up and runs the whole test suite: the command CI runs (.ci/run) and the README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real speech for the VAD tests comes from espeak-ng, promtool (package prometheus) unit-tests the
# alerting rules, and the gateway's browser page is tested in chromium (Debian packages).
if { ! command -v espeak-ng >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; } \
    && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng prometheus chromium >/dev/null) \
    || echo "warning: espeak-ng, prometheus or chromium could not be installed; the tests that need them will be skipped" >&2
fi
scripts/setup.sh
. .venv/bin/activate
# Tests run servers beside each other on few cores: OpenMP workers must not spin while they wait.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
set +e
python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ "$status" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$status"
