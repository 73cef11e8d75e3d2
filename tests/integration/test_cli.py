"""clusterctl up/status/down outside Slurm, with real processes."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from cluster.common import clusterfile


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for this machine's minimal init to reap it is not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _down_everything(clusterctl):
    """However a test ends, the clusters it started are brought down."""
    yield
    for cf in clusterfile.running():
        clusterctl("down", "--cluster", cf.cluster_id)


def test_up_status_down(clusterctl):
    up = clusterctl("up", "--num-cpus", "2", "--cluster-id", "cli-basic")
    assert up.returncode == 0, up.stderr
    assert "is up at 127.0.0.1:" in up.stdout
    cf = clusterfile.read(clusterfile.path_for("cli-basic"))
    assert cf.state == "up" and _alive(cf.head_pid)
    assert os.path.isdir(cf.runtime_dir)

    status = clusterctl("status", "--cluster", "cli-basic")
    assert status.returncode == 0, status.stderr
    assert "cluster cli-basic" in status.stdout and "cpus=2" in status.stdout
    data = json.loads(clusterctl("status", "--cluster", "cli-basic", "--json").stdout)
    assert data["clusterId"] == "cli-basic" and len(data["nodes"]) == 1

    again = clusterctl("up", "--cluster-id", "cli-basic")
    assert again.returncode == 1 and "already up" in again.stderr

    down = clusterctl("down", "--cluster", "cli-basic")
    assert down.returncode == 0, down.stderr
    assert not _alive(cf.head_pid)
    assert not os.path.exists(cf.runtime_dir)
    assert clusterfile.read(cf.path).state == "down"
    # Idempotent.
    assert clusterctl("down", "--cluster", "cli-basic").returncode == 0
    status = clusterctl("status", "--cluster", "cli-basic")
    assert status.returncode == 1 and "does not answer" in status.stderr


def test_down_after_head_was_killed(clusterctl):
    assert clusterctl("up", "--cluster-id", "cli-killed").returncode == 0
    cf = clusterfile.read(clusterfile.path_for("cli-killed"))
    os.kill(cf.head_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(cf.head_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    down = clusterctl("down", "--cluster", "cli-killed", "--timeout", "2")
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(cf.runtime_dir)
    assert clusterfile.read(cf.path).state == "down"


def test_workers_exit_when_the_head_dies(clusterctl):
    import psutil

    assert clusterctl("up", "--num-cpus", "2", "--cluster-id", "cli-orphans").returncode == 0
    cf = clusterfile.read(clusterfile.path_for("cli-orphans"))
    deadline = time.monotonic() + 10
    workers = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if "cluster.worker" in " ".join(p.info["cmdline"] or [])
                   and p.ppid() == cf.head_pid]
        time.sleep(0.05)
    assert len(workers) == 2
    os.kill(cf.head_pid, signal.SIGKILL)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "workers outlived their daemon"
    clusterctl("down", "--cluster", "cli-orphans")


def test_status_and_down_without_cluster_explain(clusterctl):
    status = clusterctl("status", "--cluster", "no-such-cluster")
    assert status.returncode == 1
    assert "no cluster 'no-such-cluster'" in status.stderr
    assert "Traceback" not in status.stderr


def test_bad_resources_json_is_refused(clusterctl):
    out = clusterctl("up", "--resources", "{not json")
    assert out.returncode == 1 and "--resources is not valid JSON" in out.stderr


def test_run_ups_runs_and_downs_with_the_drivers_exit_code(clusterctl, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import api, sys\n"
        "api.init('auto')\n"
        "@api.python_app\n"
        "def sq(x):\n    return x * x\n"
        "print('result', sum(f.result() for f in [sq(i) for i in range(5)]))\n"
        "sys.exit(3)\n")
    out = clusterctl("run", "--num-cpus", "2", "--", "python", str(driver),
                     env={"PATH": os.path.dirname(__import__("sys").executable) + ":"
                          + os.environ["PATH"]})
    assert out.returncode == 3, out.stderr
    assert "result 30" in out.stdout
    assert "is down" in out.stderr
    assert not [c for c in clusterfile.running()]


def test_run_without_command_explains(clusterctl):
    out = clusterctl("run")
    assert out.returncode == 1 and "nothing to run" in out.stderr


def test_run_tears_down_when_interrupted(tmp_path):
    import subprocess
    import sys

    driver = tmp_path / "driver.py"
    driver.write_text("import api, time\napi.init('auto')\nprint('ready', flush=True)\n"
                      "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "run", "--num-cpus", "1",
                             "--", sys.executable, str(driver)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert len(clusterfile.running()) == 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "is down" in err
    assert not clusterfile.running()


def _status_after(clusterctl, tmp_path, cluster_id: str, source: str, *args: str) -> str:
    """`clusterctl status` of a new one-CPU cluster after a driver script (`source`, run
    with the cluster file and `args`) ran against it to the end."""
    import subprocess
    import sys

    from helpers import ROOT

    assert clusterctl("up", "--num-cpus", "1", "--cluster-id", cluster_id).returncode == 0
    try:
        cf = clusterfile.read(clusterfile.path_for(cluster_id))
        script = tmp_path / "driver.py"
        script.write_text(source)
        done = subprocess.run([sys.executable, str(script), cf.path, *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return clusterctl("status", "--cluster", cluster_id).stdout
    finally:
        clusterctl("down", "--cluster", cluster_id)


def test_status_lists_actors(clusterctl, tmp_path):
    out = _status_after(
        clusterctl, tmp_path, "cli-actors",
        "import api, sys\napi.init(sys.argv[1])\n"
        "@api.actor\nclass Keeper:\n    def ping(self): return 1\n"
        "Keeper.options(name='keeper-1', lifetime='detached')().ping().result()\n")
    line = next(x for x in out.splitlines() if x.startswith("Keeper"))
    assert "keeper-1" in line and "alive" in line


def test_a_stale_cluster_file_gives_one_line_saying_what_to_do(clusterctl, no_session):
    import signal

    import api

    assert clusterctl("up", "--num-cpus", "1", "--cluster-id", "stale").returncode == 0
    cf = clusterfile.read(clusterfile.path_for("stale"))
    os.kill(cf.head_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{cf.head_pid}"):
        time.sleep(0.05)
    status = clusterctl("status", "--cluster", "stale")
    assert status.returncode != 0 and "Traceback" not in status.stderr
    assert "clusterctl down --cluster stale" in status.stderr
    with pytest.raises(api.ConnectionError,
                       match="is gone: its head .*clusterctl down --cluster stale"):
        api.init(cf.path, timeout=3)
    assert clusterctl("down", "--cluster", "stale").returncode == 0


def test_a_bad_store_size_is_one_line(clusterctl):
    out = clusterctl("up", "--object-store-memory", "12Q")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "'12Q' is not a size; write e.g. 8G" in out.stderr


def test_status_counts_the_links_that_started_staged(clusterctl, tmp_path):
    from helpers import ROOT

    out = _status_after(
        clusterctl, tmp_path, "cli-staged",
        "import os, sys\nsys.path.insert(0, sys.argv[3])\n"
        "import api\nfrom helpers import head_status, hold, wait_until\n"
        "api.init(sys.argv[1])\ngate = sys.argv[2]\n"
        "@api.python_app\ndef inc(x):\n    return (0 if x == 'released' else x) + 1\n"
        "futs = [hold(gate, gate + '.started')]\n"
        "for _ in range(5):\n    futs.append(inc(futs[-1]))\n"
        "wait_until(lambda: os.path.exists(gate + '.started'), 60, 'the first link')\n"
        "wait_until(lambda: head_status().tasks_queued >= 5, 60, 'the chain')\n"
        "open(gate, 'w').close()\nassert futs[-1].result(timeout=60) == 5\n",
        str(tmp_path / "gate"), os.path.join(ROOT, "tests"))
    assert "(5 started staged)" in out, out


def test_status_counts_the_tasks_started_prefetched(clusterctl, tmp_path):
    from helpers import ROOT

    out = _status_after(
        clusterctl, tmp_path, "cli-prefetch",
        "import sys, time\nsys.path.insert(0, sys.argv[2])\n"
        "import api\nfrom helpers import head_status\n"
        "api.init(sys.argv[1])\n"
        "@api.python_app\ndef noop():\n    return None\n"
        "deadline = time.monotonic() + 60\n"
        "while head_status().tasks_prefetched == 0:  # (heartbeats carry the count)\n"
        "    assert time.monotonic() < deadline, 'nothing started prefetched'\n"
        "    futs = [noop() for _ in range(500)]\n"
        "    assert [f.result(timeout=60) for f in futs] == [None] * 500\n"
        "    time.sleep(0.5)\n",
        os.path.join(ROOT, "tests"))
    tasks = next(x for x in out.splitlines() if x.startswith("tasks:"))
    assert " prefetched)" in tasks, out
    total = int(tasks.split(" prefetched)")[0].rsplit("(", 1)[1])
    assert total > 0
    lines = out.splitlines()
    header = next(i for i, x in enumerate(lines) if x.startswith("node "))
    column = lines[header].split().index("prefetched")
    assert int(lines[header + 1].split()[column]) == total, out  # its one node's count
