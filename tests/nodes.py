"""Helpers for tests that add daemons to a cluster (real processes on this host)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import api
from cluster.common import clusterfile

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




@contextlib.contextmanager
def head_and_second_daemon(clusterctl, cluster_id: str,
                           *second_args: str) -> Iterator[tuple[clusterfile.ClusterFile,
                                                                subprocess.Popen]]:
    """A local cluster (head with a 1-CPU daemon) plus a daemon named "second", with this
    process connected to it; everything is stopped afterwards."""
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", cluster_id)
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    daemon = start_daemon(cf, "second", *(second_args or ("--num-cpus", "1")))
    try:
        api.init(cf.path)
        wait_nodes(2)
        yield cf, daemon
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", cluster_id)
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()
