"""The autoscaler on the Slurm test bed: blocks are real sbatch jobs whose daemons join a
head running in the host's place (a login node)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT_PATH as ROOT
from helpers import bed_is_up, our_processes, wait_until

import api
from cluster.common import clusterfile

pytestmark = pytest.mark.skipif(bool(bed_is_up()), reason=bed_is_up() or "up")
BRIDGE = "shoalbr0"


def ctl(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def squeue(name: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", f"--name={name}", "--format=%i %T"],
                         capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def blocks(cluster_id: str) -> list[dict]:
    out = ctl("status", "--cluster", cluster_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout).get("blocks", [])


@pytest.fixture
def scaled(no_session):
    started = []

    def start(cluster_id, *flags, connect=True):
        out = ctl("up", "--cluster-id", cluster_id, "--partition", "debug",
                  "--nodes-per-block", "1", "--cores-per-node", "2", "--interface", BRIDGE,
                  "--strategy-period", "0.5", *flags)
        assert out.returncode == 0, out.stderr
        started.append(cluster_id)
        cf = clusterfile.read(clusterfile.path_for(cluster_id))
        if connect:
            api.init(cf.path)
        return cf

    yield start
    api.shutdown()
    for cluster_id in started:
        ctl("down", "--cluster", cluster_id)
        wait_until(lambda cid=cluster_id: not squeue(f"shoal-{cid}"), 30, "blocks to go")


@api.python_app(max_retries=2)
def two_seconds(i):
    import socket
    import time

    time.sleep(2)
    return socket.gethostname(), os.getppid()  # the daemon: blocks may share a node


def test_burst_runs_two_blocks_then_idle_blocks_are_drained(scaled):
    cf = scaled("as-burst", "--init-blocks", "0", "--min-blocks", "0", "--max-blocks", "2",
                "--max-idletime", "5")
    assert blocks(cf.cluster_id) == []
    futs = [two_seconds(i) for i in range(24)]
    seen_running = wait_until(
        lambda: len([b for b in blocks(cf.cluster_id) if b["state"] == "running"]) == 2 or None,
        90, "two running blocks")
    assert seen_running
    ran_on = {f.result(timeout=180) for f in futs}
    assert len({daemon for _, daemon in ran_on}) == 2, "work must spread over both blocks"
    assert {host for host, _ in ran_on} <= {"node1", "node2", "node3"}
    assert len(blocks(cf.cluster_id)) == 2, "never more than max_blocks"
    wait_until(lambda: not squeue(f"shoal-{cf.cluster_id}"), 60, "idle blocks scancelled")
    assert all(b["state"] == "done" for b in blocks(cf.cluster_id))
    api.shutdown()
    down = ctl("down", "--cluster", cf.cluster_id)
    assert down.returncode == 0, down.stderr
    assert not squeue(f"shoal-{cf.cluster_id}")
    wait_until(lambda: not our_processes(), 20, "no shoal process on any node")


def test_scale_in_never_kills_a_running_task(scaled):
    cf = scaled("as-scalein", "--init-blocks", "0", "--max-blocks", "1", "--max-idletime", "1")

    @api.python_app
    def long_task():
        import time

        time.sleep(6)
        return "finished"

    assert long_task().result(timeout=120) == "finished"
    wait_until(lambda: not squeue(f"shoal-{cf.cluster_id}"), 60, "the idle block to go")


def test_block_cancelled_from_outside_is_replaced(scaled):
    cf = scaled("as-replace", "--init-blocks", "0", "--max-blocks", "1", "--max-idletime", "30")
    futs = [two_seconds(i) for i in range(12)]
    first = wait_until(lambda: [b for b in blocks(cf.cluster_id) if b["state"] == "running"],
                       90, "a running block")[0]
    subprocess.run(["scancel", first["jobId"]], check=True)
    assert all(f.result(timeout=180) for f in futs)
    jobs = {b["jobId"] for b in blocks(cf.cluster_id)}
    assert len(jobs) >= 2, "the cancelled block was not replaced"


def test_walltime_drains_and_replaces_the_block(scaled):
    cf = scaled("as-walltime", "--init-blocks", "0", "--max-blocks", "1", "--walltime",
                "00:01:00", "--drain-margin", "52", "--max-idletime", "30")
    futs = [two_seconds(i) for i in range(14)]
    assert all(f.result(timeout=240) for f in futs)
    states = blocks(cf.cluster_id)
    assert len(states) >= 2, f"no replacement block: {states}"
    assert states[0]["state"] in ("draining", "done")


def test_gpu_task_scales_out_a_gpu_block_from_a_cpu_allocation(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, socket, api\n"
        "api.init('auto')\n"
        "@api.python_app(num_gpus=1)\n"
        "def gpu():\n    return socket.gethostname(), os.environ.get('CUDA_VISIBLE_DEVICES')\n"
        "print('GPU', *gpu().result())\n")
    script = tmp_path / "job.sh"
    script.write_text(
        f"set -e\ncd {tmp_path}\n"
        f"clusterctl up --quiet --partition debug --gpus-per-node 1 --cores-per-node 1 "
        f"--init-blocks 0 --max-blocks 1 --strategy-period 0.5\n"
        f"python driver.py\nclusterctl status\nclusterctl down\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOAL_HOME": str(tmp_path / "home"),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.run(["salloc", "-N1", "-c1", "-w", "node1", "bash", str(script)],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GPU "))
    host, gpus = line.split()[1:]
    assert gpus in ("0", "1"), line
    assert "running" in proc.stdout or "done" in proc.stdout


def test_head_killed_down_still_cancels_every_block(scaled):
    cf = scaled("as-killed", "--init-blocks", "2", "--max-blocks", "2",
                "--scheduler-options", "#SBATCH --begin=now+3600", connect=False)
    wait_until(lambda: len(clusterfile.read(cf.path).slurm_jobs) == 2, 30, "2 submissions")
    jobs = clusterfile.read(cf.path).slurm_jobs
    assert sorted(squeue(f"shoal-{cf.cluster_id}")) == sorted(jobs)  # both pending
    os.kill(cf.head_pid, signal.SIGKILL)
    time.sleep(0.5)
    down = ctl("down", "--cluster", cf.cluster_id)
    assert down.returncode == 0, down.stderr
    wait_until(lambda: not squeue(f"shoal-{cf.cluster_id}"), 30, "pending blocks cancelled")
