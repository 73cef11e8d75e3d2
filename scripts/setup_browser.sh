#!/usr/bin/env bash
# Debian's chromium, for the dashboard's browser tests (tests/integration/test_dashboard.py).
# Quiet and idempotent; does nothing unless root with apt-get (the tests skip, saying why,
# when there is no browser).
set -uo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no chromium (the dashboard's browser tests will skip); as root: apt-get install chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
lock=(-o DPkg::Lock::Timeout=600)
if ! apt-get "${lock[@]}" install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
  apt-get "${lock[@]}" update -qq >/dev/null 2>&1 || true
  apt-get "${lock[@]}" install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
    echo "setup: could not install chromium (the dashboard's browser tests will skip)" >&2
fi
exit 0
