#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): lint, then pytest.
# As root it also installs Slurm and brings up the local multi-node Slurm test bed
# (scripts/testbed), so the Slurm tests run against a real slurmctld/slurmd; elsewhere
# they are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy api cluster
if [ "$(id -u)" = 0 ] && [ "${SHOAL_NO_TESTBED:-0}" != 1 ]; then
  bash scripts/testbed/up.sh 16   # 16 nodes: the scale test uses them all; others take a few
  trap 'bash scripts/testbed/down.sh --quiet || true' EXIT
fi
.venv/bin/python -m pytest -q "$@"
