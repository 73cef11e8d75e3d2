#!/usr/bin/env bash
# Create .venv (if missing) and install shoal with its test extras into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv separately.
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv .venv
    else
      echo "setup: '$PY -m venv' failed; install your distribution's python3-venv" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# A path entry, not setuptools' default import hook: the hook's module is imported by
# every Python process at start (site), 12-18 ms of CPU each, which every daemon, head and
# worker paid (16 daemons on the test bed: ~0.3 CPU-s of `clusterctl up`). A wheel install
# has no hook either. Setuptools calls this mode transitional: without it, the default.
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat \
  2>/dev/null || .venv/bin/python -m pip install -q -e '.[test]'
# Bytecode for our own modules, written once here: with PYTHONDONTWRITEBYTECODE set (as on
# the machines we measure on) every daemon and worker otherwise recompiles each module it
# imports at start (importing the worker: 0.09 -> 0.06 CPU-s). Stale files are ignored.
.venv/bin/python -m compileall -q api cluster >/dev/null
# A headless browser for the dashboard's tests (root only; quiet, idempotent).
bash scripts/setup_browser.sh
