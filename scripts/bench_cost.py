"""Cost per task on the path a real cluster uses, and the cost of booting a daemon.

    python scripts/bench_cost.py [REPS] [TASKS]      # prints one JSON line of samples

A cluster started with ``clusterctl up --num-cpus 0`` (a head with no slots of its own)
and one more daemon (2 CPUs). For each repetition, a burst of TASKS no-op tasks:

- first as ``clusterctl up`` joins them: the daemon over the head's node lane (framed TCP)
  and this process as a driver on another host is, by the cluster file (a copy without the
  head's Unix socket): over the driver lane on TCP. ``lane_head_cpu_task_us``,
  ``lane_driver_cpu_task_us`` (CPU seconds of the head and of this process per task, in
  microseconds), ``lane_noop`` (the burst's tasks per second);
- then, with the daemon replaced by one joined over gRPC and this driver connected over
  gRPC (by the head's ``host:port``): ``head_cpu_task_us``, ``driver_cpu_task_us``,
  ``grpc_noop``.

And ``boot_cpu_s``: CPU seconds spent by a fresh daemon process and its first worker from
its start until it has registered over the node lane and its worker has run a first
(pinned) task: the daemon, its zygote (which forks workers, see
cluster/node/forkserver.py), the worker, and whatever they started and reaped meanwhile;
``grpc_boot_cpu_s`` the same for a daemon joining over gRPC (alternating with the first).

    python scripts/bench_cost.py --boot REPS      # only the boot figure, REPS daemons
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ["SHOAL_HOME"] = tempfile.mkdtemp(prefix="shoal-bench-cost-")

import psutil  # noqa: E402

import api  # noqa: E402
from cluster.common import clusterfile  # noqa: E402

CLI = [sys.executable, "-m", "cluster.cli"]


def _cpu(proc: psutil.Process, children: bool = False) -> float:
    """CPU seconds of `proc` (with `children`: and of every process below it, including
    those that already exited and were reaped, such as the zygote's short-lived forks)."""
    procs = [proc, *(proc.children(recursive=True) if children else [])]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
            if children:
                total += t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _daemon(cf: clusterfile.ClusterFile, name: str, cpus: int,
            lane: bool) -> subprocess.Popen[bytes]:
    """A daemon joining over the head's node lane (as `clusterctl up`'s do), else gRPC."""
    env = {**os.environ, "SHOAL_SECRET": cf.secret, "PYTHONPATH": ROOT}
    address = f"tcp:{cf.node_lane_address}" if lane else cf.address
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cf.cluster_id,
         "--head-address", address, "--node-name", name, "--num-cpus", str(cpus)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=ROOT)  # (not the caller's directory: its `cluster` would come first on sys.path)


@api.python_app
def noop() -> None:
    return None


def _from_elsewhere(cf: clusterfile.ClusterFile) -> str:
    """A copy of `cf` as a driver on another host reads it (no Unix socket it could use)."""
    data = {**dataclasses.asdict(cf), "host": "elsewhere", "unix_socket": ""}
    fd, path = tempfile.mkstemp(suffix=".json", dir=os.environ["SHOAL_HOME"])
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return path


def _bursts(cf: clusterfile.ClusterFile, reps: int, tasks: int) -> dict[str, list[float]]:
    """Per repetition, a burst of `tasks` no-ops: the head's and this driver's CPU per
    task (us), and tasks/s."""
    out: dict[str, list[float]] = {"head_cpu_task_us": [], "driver_cpu_task_us": [],
                                   "grpc_noop": []}
    deadline = time.monotonic() + 60
    while True:
        try:
            noop().result(timeout=10)
            break
        except api.ResourceUnavailableError:  # the daemon has not joined yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    head, me = psutil.Process(cf.head_pid), psutil.Process()
    for f in [noop() for _ in range(tasks // 4 if reps else 0)]:   # warm-up
        f.result()
    for _ in range(reps):
        h0, d0, t0 = _cpu(head), _cpu(me), time.perf_counter()
        futs = [noop() for _ in range(tasks)]
        for f in futs:
            f.result()
        elapsed = time.perf_counter() - t0
        out["head_cpu_task_us"].append((_cpu(head) - h0) / tasks * 1e6)
        out["driver_cpu_task_us"].append((_cpu(me) - d0) / tasks * 1e6)
        out["grpc_noop"].append(tasks / elapsed)
    return out


def _boot(cf: clusterfile.ClusterFile, name: str, lane: bool,
          daemons: list[subprocess.Popen[bytes]]) -> float:
    """Start a daemon named `name` (over the node lane, else gRPC) and return the CPU
    seconds it and its first worker took until that worker ran a pinned task."""
    proc = _daemon(cf, name, 1, lane)
    daemons.append(proc)
    pinned = noop.options(num_cpus=0, resources={f"node:{name}": 0.01})
    deadline = time.monotonic() + 60
    while True:
        try:
            pinned().result(timeout=30)
            break
        except api.ResourceUnavailableError:  # not joined yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    return _cpu(psutil.Process(proc.pid), children=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def main() -> None:
    boot_only = sys.argv[1:2] == ["--boot"]
    args = [a for a in sys.argv[1:] if a != "--boot"]
    reps = int(args[0]) if args else 3
    tasks = int(args[1]) if len(args) > 1 else 20_000
    cluster_id = f"cost-{os.getpid()}"
    subprocess.run([*CLI, "up", "--num-cpus", "0", "--cluster-id", cluster_id], check=True,
                   cwd=ROOT, capture_output=True)
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    daemons: list[subprocess.Popen[bytes]] = []
    out: dict[str, list[float]] = {"head_cpu_task_us": [], "driver_cpu_task_us": [],
                                   "grpc_noop": [], "boot_cpu_s": [], "grpc_boot_cpu_s": []}
    try:
        if not boot_only:
            # As `clusterctl up` joins them: the daemon on the node lane, and the driver
            # (as one on another host is, by the cluster file) on the TCP driver lane.
            daemons.append(_daemon(cf, "second", 2, lane=True))
            api.init(_from_elsewhere(cf), log_to_driver=False)
            assert api._session.client().address.startswith("tcp:")
            lane = _bursts(cf, reps, tasks)
            api.shutdown()
            _stop(daemons.pop())
            out["lane_head_cpu_task_us"] = lane["head_cpu_task_us"]
            out["lane_driver_cpu_task_us"] = lane["driver_cpu_task_us"]
            out["lane_noop"] = lane["grpc_noop"]
        # The rows: the daemon joined over gRPC, the driver by host:port (gRPC).
        daemons.append(_daemon(cf, "second-grpc", 2, lane=False))
        api.init(cf.address, log_to_driver=False)
        out.update(_bursts(cf, 0 if boot_only else reps, tasks))
        for i in range(reps):   # alternating, so both see the same drift of the machine
            out["boot_cpu_s"].append(_boot(cf, f"boot{i}", True, daemons))
            out["grpc_boot_cpu_s"].append(_boot(cf, f"grpcboot{i}", False, daemons))
    finally:
        api.shutdown()
        subprocess.run([*CLI, "down", "--cluster", cluster_id], cwd=ROOT, capture_output=True)
        for d in daemons:
            _stop(d)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
