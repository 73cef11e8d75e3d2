"""Helpers for tests that add daemons to a cluster (real processes on this host)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import api
from cluster import clusterfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_daemon(cf: clusterfile.ClusterFile, name: str, *extra: str,
                  head_timeout: float = 30) -> subprocess.Popen:
    env = {**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cf.cluster_id,
         "--head-address", cf.address, "--node-name", name, "--head-timeout",
         str(head_timeout), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_nodes(count: int, timeout: float = 20) -> None:
    @api.python_app(num_cpus=0)
    def nothing():
        return None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = api._session.client()
        if len([n for n in client.nodes.values() if n.state == "alive"]) >= count:
            return
        nothing().result(timeout=10)  # node-table updates ride on result batches
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} nodes joined")


