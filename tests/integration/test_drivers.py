"""Drivers that leave: their work leaves with them, and other drivers are not held up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

import api
from cluster.common import clusterfile

LEAVER = """
import sys, time
import api
api.init(sys.argv[1], log_to_driver=False)

@api.python_app
def slow(marker):
    import time
    open(marker, "w").close()
    time.sleep(300)

futures = [slow(f"{sys.argv[2]}.{i}") for i in range(4)]
import os
deadline = time.monotonic() + 60
while time.monotonic() < deadline and sum(os.path.exists(f"{sys.argv[2]}.{i}")
                                          for i in range(4)) < 2:
    time.sleep(0.05)
api.shutdown()
"""


@pytest.fixture
def two_cpu_cluster(clusterctl, no_session):
    up = clusterctl("up", "--num-cpus", "2", "--cluster-id", "leaver")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("leaver"))
    yield cf
    api.shutdown()
    clusterctl("down", "--cluster", "leaver")


def test_a_departed_drivers_running_tasks_are_stopped(two_cpu_cluster, tmp_path, clusterctl):
    cf = two_cpu_cluster
    marker = str(tmp_path / "started")
    leaver = subprocess.run([sys.executable, "-c", LEAVER, cf.path, marker],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert leaver.returncode == 0, leaver.stderr
    assert sum(os.path.exists(f"{marker}.{i}") for i in range(4)) == 2, "two ran"

    api.init(cf.path)

    @api.python_app
    def quick():
        return "mine"

    # Before the fix, the departed driver's two 300 s tasks held both CPUs (and its two
    # queued ones followed): this waited minutes.
    assert quick().result(timeout=60) == "mine"
    started = {i for i in range(4) if os.path.exists(f"{marker}.{i}")}
    assert started == {0, 1}, "its queued tasks never started"
    status = json.loads(clusterctl("status", "--cluster", cf.cluster_id, "--json").stdout)
    assert status.get("tasksRunning", 0) == 0 and status.get("tasksQueued", 0) == 0
