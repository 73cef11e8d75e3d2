"""The run history at scale: a synthetic 100,000-task run written through the real writer
(:class:`cluster.head.historywriter.Writer`, the batches a head sends), then the time
`clusterctl history` and the dashboard's tasks page take to answer, and the file's size.

    python scripts/bench_history.py [--tasks 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from cluster.common import clusterfile  # noqa: E402
from cluster.head.historywriter import Writer, open_db  # noqa: E402


def synthesize(path: str, tasks: int) -> float:
    """Write `tasks` tasks (5% failing, 3 apps, 2 nodes, 8 workers) in 100 ms batches of
    1,000; returns the writer's seconds."""
    writer = Writer(open_db(path))
    t0 = 1_800_000_000.0
    writer.batch(([(1, "nodeA", "10.0.0.1", "", 1, t0, '{"cpus": 4}'),
                   (2, "nodeB", "10.0.0.2", "", 2, t0, '{"cpus": 4}')], [], [], [], [], [],
                  [("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("cluster_id", "bench"), ("started", repr(t0)), ("ended", "")])]))
    start = time.perf_counter()
    for first in range(0, tasks, 1000):
        new, events, results, lines, failures = [], [], [], [], []
        for seq in range(first, min(tasks, first + 1000)):
            tid = (1 << 40) | (seq + 1)
            t = t0 + seq * 0.001
            node = 1 + seq % 2
            new.append((tid, ("simulate", "reduce", "plot")[seq % 3], 0, '{"cpus": 1.0}', t,
                        "", "", 0))
            events += [(tid, "QUEUED", t, 0, 0), (tid, "RUNNING", t + 0.01, node, 0),
                       (tid, "FAILED" if seq % 20 == 0 else "DONE", t + 0.05, node, 0)]
            results.append((tid, 1000 + seq % 8, 0.04))
            if seq % 20 == 0:
                failures.append((tid, t + 0.05, 1, b"", f"ValueError: bad seed {seq}"))
            if seq % 10 == 0:
                lines.append((tid, t + 0.02, False, f"node{node}", f"step {seq} done\n"))
        writer.batch(([], new, events, results, lines, failures, []))
    seconds = time.perf_counter() - start
    writer.db.execute("UPDATE meta SET value = ? WHERE key = 'ended'", (repr(t0 + 200),))
    writer.db.close()
    return seconds


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    ns = parser.parse_args()
    home = tempfile.mkdtemp(prefix="shoal-bench-history-")
    log_dir = os.path.join(home, "logs", "bench")
    os.makedirs(log_dir)
    path = os.path.join(log_dir, "history.sqlite")
    env = {**os.environ, "SHOAL_HOME": home}
    os.environ["SHOAL_HOME"] = home
    clusterfile.write(clusterfile.ClusterFile(cluster_id="bench", address="", secret="",
                                              log_dir=log_dir, state="down"))
    seconds = synthesize(path, ns.tasks)
    size = sum(os.path.getsize(os.path.join(log_dir, f)) for f in os.listdir(log_dir))
    print(f"{ns.tasks:,} tasks written in {seconds:.2f} s ({seconds / ns.tasks * 1e6:.1f} us "
          f"a task in the writer); history file {size / 2**20:.1f} MiB "
          f"({size / ns.tasks:.0f} bytes a task)")
    base = timed(["--help"], env)
    for args in (["history", "--cluster", "bench"],
                 ["history", "--cluster", "bench", "--state", "failed"],
                 ["history", "--cluster", "bench", "--app", "plot", "--limit", "20"],
                 ["history", "--cluster", "bench", "--json"],
                 ["logs", f"{(1 << 40) | 50001:#x}", "--cluster", "bench"],
                 ["timeline", "--cluster", "bench", "-o", os.path.join(home, "t.json")]):
        best = min(timed(args, env) for _ in range(3))
        shown = " ".join(a if len(a) < 20 else "trace.json" for a in args if a != "bench"
                         and a != "--cluster")
        print(f"clusterctl {shown:<40} {best:.3f} s "
              f"(interpreter start and imports: {base:.3f} s)")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "dashboard", "--cluster",
                             "bench"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        opener.open(url).read()
        root = url.split("?")[0]
        for page in ("tasks", "tasks?state=failed", "tasks?app=plot&page=500",
                     "api/tasks?state=done", "", "api/overview", "timeline"):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                body = opener.open(root + page).read()
                times.append(time.perf_counter() - start)
            print(f"dashboard /{page:<32} {min(times):.3f} s ({len(body) / 1024:.0f} KiB)")
        data = json.loads(opener.open(root + "api/tasks?state=failed").read())
        assert data["total"] == (ns.tasks + 19) // 20, data["total"]
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
