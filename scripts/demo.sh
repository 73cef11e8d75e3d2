#!/usr/bin/env bash
# Set up, start a local cluster, run the demo workflow against it, and tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SHOAL_HOME=${SHOAL_HOME:-$PWD/.shoal-demo}
id=demo-$$
.venv/bin/clusterctl up --cluster-id "$id"
trap '.venv/bin/clusterctl down --cluster "$id"' EXIT
.venv/bin/clusterctl status --cluster "$id"
# The drivers run from $SHOAL_HOME, so their runinfo/ folders stay out of the checkout.
root=$PWD
(cd "$SHOAL_HOME" && "$root/.venv/bin/python" "$root/scripts/demo/argsum.py" "$SHOAL_HOME/clusters/$id.json")
(cd "$SHOAL_HOME" && "$root/.venv/bin/python" "$root/scripts/demo/pipeline.py" "$SHOAL_HOME/clusters/$id.json")
.venv/bin/clusterctl status --cluster "$id"
# What the run history recorded (it outlives the cluster: try it again after the demo),
# and where the dashboard is (open it while the cluster is up).
.venv/bin/clusterctl history --cluster "$id" --state failed --limit 5
.venv/bin/clusterctl history --cluster "$id" --limit 5
.venv/bin/clusterctl dashboard --cluster "$id"
