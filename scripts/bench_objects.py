"""Object workloads through the whole runtime (run by bench.py; prints one JSON line).

A cluster of two daemons on this host (a head with its daemon, plus a second daemon) with
the driver beside them:

- put of a 256 MiB array (GB/s), puts of a 1 MiB array (us each), and get of a 1 GiB
  put object (ms), driver on the host;
- a task summing a 256 MiB put ref, as % of numpy.sum over the same bytes in-process;
- a 256 MiB task result fetched by the driver (ms: it is mapped, not copied), and a
  512 MiB actor method result (a direct call) measured the same way: the call has
  finished, then the time of ``result()`` (the actor left it in its node's store);
- node to node: a 1 GiB object made on one daemon passed to a task on the other, the
  transfer's GB/s (that task's time less the same task's time beside the object; the
  task maps its argument and reads none of it), next to raw TCP between the same
  addresses measured in the same run;
- a driver with no store on its host (SHOAL_OBJECTS_VIA_NETWORK=1) putting and getting
  256 MiB (GB/s).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import bench_peers  # noqa: E402

import api  # noqa: E402
from cluster.common import clusterfile  # noqa: E402

MiB = 2**20


@api.python_app
def summed(a: Any) -> tuple[float, float, float]:
    """(seconds for a.sum() on the value as given, seconds on a private copy, total)."""
    start = time.perf_counter()
    total = float(a.sum())
    mapped = time.perf_counter() - start
    private = np.array(a)
    private.sum()  # warm
    start = time.perf_counter()
    private.sum()
    return mapped, time.perf_counter() - start, total


@api.python_app
def made(n: int) -> Any:
    return np.ones(n)


@api.python_app
def length(a: Any) -> int:
    return len(a)  # maps the object, reads none of it


@api.python_app(num_cpus=0)
def noop() -> None:
    return None


@api.actor(num_cpus=0)
class Maker:
    """An actor whose method returns a large array (its result goes to the store)."""

    def make(self, n: int) -> Any:
        return np.ones(n)


def _nudge() -> None:
    noop().result(timeout=60)


def raw_tcp(host: str, nbytes: int) -> float:
    """GB/s of one TCP stream between two processes on `host`, 2 MiB writes."""
    server = socket.socket()
    server.bind((host, 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = ("import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])));"
            "b=memoryview(bytearray(2<<20));n=int(sys.argv[3])\n"
            "while n>0:\n s.sendall(b[:min(n,len(b))]);n-=len(b)\ns.close()")
    proc = subprocess.Popen([sys.executable, "-c", code, host, str(port), str(nbytes)])
    conn, _ = server.accept()
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    start = time.perf_counter()
    while got < nbytes:
        n = conn.recv_into(view[got:], min(2 * MiB, nbytes - got))
        if not n:
            break
        got += n
    seconds = time.perf_counter() - start
    proc.wait()
    conn.close()
    server.close()
    return got / 1e9 / seconds


def run(reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in (
        "obj_put", "obj_get", "obj_task_sum", "obj_result", "obj_actor_result", "obj_n2n",
        "obj_tcp", "obj_remote_put", "obj_remote_get")}
    out["obj_put_1mib"] = bench_peers.small_puts(api.put, reps)
    arr = np.random.default_rng(0).random(32 * MiB)              # 256 MiB
    ref = api.put(arr)
    del ref
    _nudge()
    for _ in range(reps):
        start = time.perf_counter()
        ref = api.put(arr)
        out["obj_put"].append(arr.nbytes / 1e9 / (time.perf_counter() - start))
        mapped, private, total = summed(ref).result(timeout=120)
        out["obj_task_sum"].append(100 * private / mapped)
        del ref
        _nudge()                                                  # its file is reused
    big = api.put(np.ones(128 * MiB))                             # 1 GiB
    for _ in range(reps):
        start = time.perf_counter()
        got = api.get(big)
        out["obj_get"].append((time.perf_counter() - start) * 1e3)
        del got
    for _ in range(reps):
        fut = made(32 * MiB)
        fut.exception(timeout=120)
        start = time.perf_counter()
        fut.result()
        out["obj_result"].append((time.perf_counter() - start) * 1e3)
        del fut
    maker = Maker()
    maker.make(1).result(timeout=60)                              # its route is known
    for _ in range(reps):
        fut = maker.make(64 * MiB)                                # 512 MiB, a direct call
        fut.exception(timeout=120)
        start = time.perf_counter()
        fut.result()
        out["obj_actor_result"].append((time.perf_counter() - start) * 1e3)
        del fut
        _nudge()
    api.kill(maker)

    nodes = [n for n in api._session.client().nodes.values() if n.state == "alive"]
    first = next(n.name for n in nodes if n.name != "second")
    on = lambda name: {"resources": {f"node:{name}": 0.01}}  # noqa: E731
    for _ in range(reps):
        source = made.options(**on(first))(128 * MiB)            # 1 GiB on the first node
        source.exception(timeout=300)
        start = time.perf_counter()
        length.options(**on(first))(source).result(timeout=300)
        local = time.perf_counter() - start
        start = time.perf_counter()
        length.options(**on("second"))(source).result(timeout=300)
        remote = time.perf_counter() - start
        out["obj_n2n"].append(128 * MiB * 8 / 1e9 / max(remote - local, 1e-6))
        out["obj_tcp"].append(raw_tcp("127.0.0.1", 1 << 30))
        del source
        _nudge()

    os.environ["SHOAL_OBJECTS_VIA_NETWORK"] = "1"
    for _ in range(reps):
        start = time.perf_counter()
        ref = api.put(arr)
        out["obj_remote_put"].append(arr.nbytes / 1e9 / (time.perf_counter() - start))
        start = time.perf_counter()
        api.get(ref)
        out["obj_remote_get"].append(arr.nbytes / 1e9 / (time.perf_counter() - start))
        del ref
        _nudge()
    del os.environ["SHOAL_OBJECTS_VIA_NETWORK"]
    return out


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    env = {**os.environ, "PYTHONPATH": ROOT}
    cli = [sys.executable, "-m", "cluster.cli"]
    cluster_id = f"bench-objects-{os.getpid()}"
    subprocess.run([*cli, "up", "--num-cpus", "1", "--cluster-id", cluster_id, "--quiet"],
                   check=True, env=env, capture_output=True)
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    second = subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", cluster_id,
         "--head-address", cf.address, "--node-name", "second", "--num-cpus", "1"],
        env={**env, "SHOAL_SECRET": cf.secret}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        api.init(cf.path, log_to_driver=False)
        deadline = time.monotonic() + 30
        while len(api._session.client().nodes) < 2 and time.monotonic() < deadline:
            _nudge()
            time.sleep(0.1)
        results = run(reps)
    finally:
        api.shutdown()
        subprocess.run([*cli, "down", "--cluster", cluster_id], env=env, capture_output=True)
        second.kill()
        second.wait()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
