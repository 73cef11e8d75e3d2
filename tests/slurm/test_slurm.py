"""shoal on a real Slurm: the test bed (scripts/testbed) runs slurmctld and one slurmd per
node, each node in its own network and UTS namespace, so nodes have their own addresses
and hostnames. scripts/test.sh brings it up when run as root."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT_PATH as ROOT
from helpers import TESTBED, bed_is_up, job_alive, namespaces, our_processes, wait_until

from cluster.common import clusterfile

PY = sys.executable

pytestmark = pytest.mark.skipif(bool(bed_is_up()), reason=bed_is_up() or "up")


def _in_allocation(tmp_path, env, salloc: list[str], body: str,
                   timeout: float = 240) -> tuple[subprocess.CompletedProcess, str]:
    """Run shell `body` in tmp_path under ``salloc SALLOC...`` (stopping at the first
    failing command); returns the finished process and the job id it printed."""
    script = tmp_path / "job.sh"
    script.write_text(f'set -e\ncd {tmp_path}\necho "JOB $SLURM_JOB_ID"\n'
                      + textwrap.dedent(body))
    proc = subprocess.run(["salloc", *salloc, "bash", str(script)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=tmp_path)
    job = next((line.split()[1] for line in proc.stdout.splitlines()
                if line.startswith("JOB ")), "")
    return proc, job


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "shoal-home"
    return {**os.environ, "SHOAL_HOME": str(home), "PYTHONPATH": str(ROOT),
            "PATH": f"{os.path.dirname(PY)}:{os.environ['PATH']}"}


DRIVER = textwrap.dedent("""
    import os, socket, sys, api
    api.init("auto")

    @api.python_app
    def platform(i):
        import time
        time.sleep(0.2)
        return socket.gethostname()

    names = sorted({f.result() for f in [platform(i) for i in range(16)]})
    print("NAMES", ",".join(names))

    @api.python_app(resources={"node:node1": 0.01})
    def make():
        import numpy as np
        return socket.gethostname(), np.ones(8 * 2**20)          # 64 MB

    @api.python_app(resources={"node:node2": 0.01})
    def consume(made):
        host, array = made
        return host, socket.gethostname(), float(array.sum())

    print("MOVED", *consume(make()).result())

    @api.bash_app(num_nodes=2, ranks_per_node=1)
    def everywhere(stdout=None):
        return "$CLUSTER_MPI_PREFIX hostname"

    fut = everywhere(stdout=os.path.abspath("mpi_hosts.txt"))
    fut.result()
    print("MPI", ",".join(sorted(open(fut.stdout).read().split())))

    @api.bash_app(num_nodes=2, ranks_per_node=2)
    def mpi_hello(program, stdout=None):
        return f"$CLUSTER_MPI_PREFIX --mpi=pmix {program}"

    fut = mpi_hello(sys.argv[1], stdout=os.path.abspath("mpi_hello.txt"))
    fut.result()
    print("HELLO", "|".join(sorted(open(fut.stdout).read().strip().splitlines())))

    @api.python_app(num_gpus=1)
    def gpu():
        import time
        time.sleep(0.3)
        return socket.gethostname(), os.environ.get("CUDA_VISIBLE_DEVICES")

    print("GPUS", sorted(f.result() for f in [gpu() for _ in range(4)]))

    @api.actor(resources={"node:node2": 0.01})
    class Far:
        def __init__(self):
            self.calls = 0

        def where(self):
            self.calls += 1
            return socket.gethostname(), self.calls

    far = Far()
    results = [far.where().result() for _ in range(50)]
    conn = api._session._state["client"].direct.routes[far.actor_id].conn
    family = "tcp" if conn is not None and conn.sock.family == socket.AF_INET else "other"
    print("ACTOR", results[-1][0], results[-1][1], family)
    api.shutdown()
""")


def test_salloc_up_driver_status_down(tmp_path, env):
    (tmp_path / "driver.py").write_text(DRIVER)
    proc, job = _in_allocation(tmp_path, env, ["-N2", "-c2", "--gres=gpu:2"], f"""
        clusterctl up --quiet
        python driver.py {TESTBED}/bin/mpi_hello
        clusterctl status
        clusterctl down
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "NAMES node1,node2" in out
    moved = next(line for line in out.splitlines() if line.startswith("MOVED")).split()
    assert moved[1:3] == ["node1", "node2"] and float(moved[3]) == 8 * 2**20
    assert "MPI node1,node2" in out
    hello = next(line for line in out.splitlines() if line.startswith("HELLO "))[6:].split("|")
    assert hello == [f"hello from rank {r} of 4 on node{1 + r // 2}" for r in range(4)], hello
    # An actor on node2, called from the login node's place: straight over TCP.
    assert "ACTOR node2 50 tcp" in out
    gpus = next(line for line in out.splitlines() if line.startswith("GPUS "))
    # Each GPU task saw exactly one of its node's two GPUs.
    assert "'0'" in gpus and "'1'" in gpus and "'0,1'" not in gpus and "None" not in gpus
    assert "node1" in out and "node2" in out and "alive" in out  # status lists both nodes
    cf = clusterfile.ClusterFile(**json.loads(
        (tmp_path / "shoal-home" / "clusters" / f"{job}.json").read_text()))
    assert cf.state == "down" and cf.slurm_job_id == job
    wait_until(lambda: not our_processes(job), 20, "shoal processes to leave the nodes")
    assert not [p for p in pathlib.Path("/dev/shm").glob(f"shoal-*/{job}*")]
    assert not job_alive(job)


SIXTEEN = textwrap.dedent("""
    import api
    api.init("auto")

    @api.python_app(num_cpus=0)
    def host():
        import socket
        return socket.gethostname()

    names = [f"node{i}" for i in range(1, 17)]
    seen = [host.options(resources={f"node:{n}": 0.01})().result(timeout=120) for n in names]
    print("SEEN", ",".join(seen))
    api.shutdown()
""")


def test_sixteen_nodes_come_up_and_each_runs_a_task(tmp_path, env):
    if len(namespaces()) < 16:
        pytest.skip("the test bed has fewer than 16 nodes (scripts/testbed/up.sh 16)")
    (tmp_path / "driver.py").write_text(SIXTEEN)
    timer = f"{PY} -c 'import time; print(time.time())'"
    proc, job = _in_allocation(tmp_path, env, ["-N16", "-c1"], f"""
        start=$({timer})
        clusterctl up --quiet
        echo "UP $start $({timer})"
        clusterctl status
        python driver.py
        clusterctl down
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "nodes: 16 alive of 16" in out
    assert f"SEEN {','.join(f'node{i}' for i in range(1, 17))}" in out
    start, end = next(line for line in out.splitlines() if line.startswith("UP ")).split()[1:]
    print(f"clusterctl up on 16 nodes: {float(end) - float(start):.2f} s")  # a figure, no assert
    wait_until(lambda: not our_processes(job), 30, "shoal processes to leave the nodes")
    assert not job_alive(job)


PARSL_DRIVER = textwrap.dedent("""
    import sys
    import parsl
    from parsl import bash_app, python_app
    from parsl.config import Config
    from api.parsl import ShoalExecutor

    parsl.load(Config(executors=[ShoalExecutor(address="auto")]))

    @python_app
    def where():
        import socket, time
        time.sleep(0.3)
        return socket.gethostname()

    @bash_app
    def echo(msg, stdout=parsl.AUTO_LOGNAME):
        return f"echo {msg}"

    @bash_app
    def mpi(hello, stdout=parsl.AUTO_LOGNAME, parsl_resource_specification={}):
        return f"$PARSL_MPI_PREFIX --mpi=pmix {hello}"

    print("WHERE", sorted({f.result() for f in [where() for _ in range(8)]}))
    fut = echo("hello from parsl")
    fut.result()
    print("ECHO", open(fut.stdout).read().strip())
    run = mpi(sys.argv[1], parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 2})
    run.result()
    print("MPI", "|".join(sorted(open(run.stdout).read().split("\\n")[:-1])))
    parsl.dfk().cleanup()
""")


def test_an_unchanged_parsl_workflow_runs_headless_in_an_allocation(tmp_path, env):
    pytest.importorskip("parsl")
    (tmp_path / "parsl_driver.py").write_text(PARSL_DRIVER)
    proc, job = _in_allocation(tmp_path, env, ["-N2", "-c2"], f"""
        clusterctl up --quiet
        python parsl_driver.py {TESTBED}/bin/mpi_hello
        clusterctl down
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "ECHO hello from parsl" in out
    assert "'node1'" in out and "'node2'" in out   # python apps on both nodes
    line = next(x for x in out.splitlines() if x.startswith("MPI "))
    assert line.count("hello from rank") == 4 and "on node1" in line and "on node2" in line
    wait_until(lambda: not our_processes(job), 30, "shoal processes to leave the nodes")


def test_sbatch_clusterctl_run(tmp_path, env):
    (tmp_path / "driver.py").write_text(textwrap.dedent("""
        import socket, api
        api.init("auto")
        @api.python_app
        def host(i):
            import time
            time.sleep(0.2)
            return socket.gethostname()
        print("HOSTS", ",".join(sorted({f.result() for f in [host(i) for i in range(12)]})))
        raise SystemExit(5)
    """))
    script = tmp_path / "batch.sh"
    script.write_text(f"#!/bin/bash\ncd {tmp_path}\nclusterctl run --quiet -- python driver.py\n"
                      "echo EXIT $?\n")
    out = subprocess.run(["sbatch", "--parsable", "-N2", "-c2", "-o", str(tmp_path / "out.txt"),
                          str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    wait_until(lambda: not job_alive(job), 180, f"batch job {job} to finish")
    text = (tmp_path / "out.txt").read_text()
    assert "HOSTS node1,node2" in text, text
    assert "EXIT 5" in text, text
    wait_until(lambda: not our_processes(job), 20, "shoal processes to leave the nodes")


def test_head_killed_daemons_exit_and_down_cleans_up(tmp_path, env):
    proc, job = _in_allocation(tmp_path, env, ["-N2", "-c2"], """
        clusterctl up --quiet --head-timeout 3
        pid=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['head_pid'])" \\
              "$SHOAL_HOME/clusters/$SLURM_JOB_ID.json")
        kill -9 "$pid"
        for i in $(seq 100); do
          pgrep -f "cluster.node --daemon --cluster-id $SLURM_JOB_ID" >/dev/null || break
          sleep 0.2
        done
        pgrep -f "cluster.node --daemon --cluster-id $SLURM_JOB_ID" && echo DAEMONS-LEFT
        clusterctl down
        echo DOWN-OK
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DAEMONS-LEFT" not in proc.stdout
    assert "DOWN-OK" in proc.stdout
    wait_until(lambda: not our_processes(job), 20, "shoal processes to leave the nodes")


def test_two_clusters_side_by_side(tmp_path, env):
    """Two allocations on the same node each get their own cluster; down of one leaves the
    other running."""
    hold = tmp_path / "release"
    for name in ("a", "b"):
        (tmp_path / f"{name}.sh").write_text(textwrap.dedent(f"""
            cd {tmp_path}
            clusterctl up --quiet && echo "$SLURM_JOB_ID" > {tmp_path}/{name}.job
            while [ ! -e {hold}.{name} ]; do sleep 0.1; done
            clusterctl down
        """))
    procs = {name: subprocess.Popen(["salloc", "-N1", "-c1", "-w", "node1", "bash",
                                     str(tmp_path / f"{name}.sh")], env=env, cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("a", "b")}
    try:
        jobs = {n: wait_until(lambda n=n: (tmp_path / f"{n}.job").exists() and
                              (tmp_path / f"{n}.job").read_text().strip(), 120, f"cluster {n}")
                for n in ("a", "b")}
        files = {n: clusterfile.ClusterFile(**json.loads(
            (tmp_path / "shoal-home" / "clusters" / f"{j}.json").read_text()))
            for n, j in jobs.items()}
        assert files["a"].address != files["b"].address
        assert files["a"].runtime_dir != files["b"].runtime_dir
        (tmp_path / "release.b").touch()
        procs["b"].wait(timeout=60)
        check = subprocess.run(
            [PY, "-c", "import api,socket; api.init('auto')\n"
             "print('A-ALIVE', api.python_app(socket.gethostname)().result())"],
            env={**env, "SLURM_JOB_ID": jobs["a"]}, capture_output=True, text=True, timeout=60)
        assert "A-ALIVE node1" in check.stdout, check.stderr
    finally:
        for name in ("a", "b"):
            (tmp_path / f"release.{name}").touch()
        for proc in procs.values():
            proc.wait(timeout=60)


FAULT_DRIVER = textwrap.dedent("""
    import os, socket, subprocess, sys, time, api
    node_sh, tmp = sys.argv[1], sys.argv[2]
    api.init("auto")
    client = api._session.client()
    cpus = {n.name: int(n.total.cpus) for n in client.nodes.values()}

    def wait_files(paths, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not all(os.path.exists(p) for p in paths):
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    @api.python_app
    def hold(flag, gate):
        open(flag, "w").close()
        while not os.path.exists(gate):
            time.sleep(0.05)

    @api.python_app
    def produce(value):
        import numpy as np
        return socket.gethostname(), np.full(2**21, value)            # 16 MiB: stored

    @api.python_app
    def consume(made):
        host, array = made
        return host, socket.gethostname(), float(array.sum())

    @api.python_app(max_retries=3)
    def slow(i, flag):
        open(flag, "w").close()
        time.sleep(2)
        return i * i

    @api.python_app(num_cpus=0)
    def where():
        return socket.gethostname()

    # A result that only node3 holds: the other nodes' CPUs are held while it is made.
    gate = f"{tmp}/gate"
    holds = [hold.options(num_cpus=cpus[n], resources={f"node:{n}": 0.01})(f"{tmp}/h-{n}", gate)
             for n in ("node1", "node2")]
    wait_files([f"{tmp}/h-node1", f"{tmp}/h-node2"], "holds run")
    made = produce(3.0)
    print("MADE", made.result()[0], flush=True)

    @api.actor(num_cpus=0, max_restarts=1)
    class Tally:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n, socket.gethostname()

    tally = Tally()                                  # the least loaded node: node3
    print("ACTOR", *tally.add(1).result(), flush=True)
    open(gate, "w").close()
    [h.result() for h in holds]

    # A put whose only copy is in node3's store.
    import numpy as np
    from cluster.store import objectformat
    from cluster.common.protocol import pb
    from cluster.common.serialization import ObjectRef
    node3 = next(n for n in client.nodes.values() if n.name == "node3")
    enc = objectformat.encode(np.full(2**20, 9.0))
    put_id = client.new_id()
    client.objects._write_local(node3, put_id, enc)
    client.put(pb.Value(id=put_id, size=enc.size, holders=[node3.node_id]))
    lonely = ObjectRef(put_id, client)
    assert float(api.get(lonely)[0]) == 9.0

    # 1. SIGKILL node3's daemon while tasks run on every node.
    flags = [f"{tmp}/a{i}" for i in range(sum(cpus.values()))]
    futs = [slow(i, f) for i, f in enumerate(flags)]
    wait_files(flags, "every slot runs a task")
    for pid in subprocess.run(["ip", "netns", "pids", "shoal-node3"], capture_output=True,
                              text=True).stdout.split():
        try:
            cmd = open(f"/proc/{pid}/cmdline").read()
        except OSError:
            continue
        if "cluster.node" in cmd and "--daemon" in cmd:
            os.kill(int(pid), 9)
    print("KILLED", sorted(f.result(timeout=120) for f in futs) ==
          sorted(i * i for i in range(len(flags))), flush=True)
    print("REBUILT", *consume(made).result(timeout=120), flush=True)
    try:
        api.get(lonely, timeout=60)
        print("PUT survived?!")
    except api.ObjectLostError as err:
        print("PUT lost:", str(err).split(",")[0], flush=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            print("RESTARTED", *tally.add(5).result(timeout=60), flush=True)
            break
        except api.ActorDiedError:
            assert time.monotonic() < deadline, "the actor never came back"
            time.sleep(0.2)

    # 2. Cut node2's link while tasks run there; heal it after the head gave up on it.
    alive = [n for n, c in cpus.items() if n != "node3"]
    flags = [f"{tmp}/b{i}" for i in range(sum(cpus[n] for n in alive))]
    futs = [slow(i, f) for i, f in enumerate(flags)]
    wait_files(flags, "node1 and node2 run tasks")
    subprocess.run(["bash", node_sh, "cut", "node2"], check=True)
    cut = time.monotonic()
    ok = sorted(f.result(timeout=120) for f in futs) == sorted(i * i for i in range(len(flags)))
    print("CUT", ok, round(time.monotonic() - cut), flush=True)
    subprocess.run(["bash", node_sh, "heal", "node2"], check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if where.options(resources={"node:node2": 0.01})().result(timeout=60) == "node2":
                print("REJOINED node2", flush=True)
                break
        except api.ResourceUnavailableError:  # not back yet
            time.sleep(0.5)
    api.shutdown()
""")


def test_node_loss_and_link_cut_on_the_test_bed(tmp_path, env):
    (tmp_path / "driver.py").write_text(FAULT_DRIVER)
    node_sh = ROOT / "scripts" / "testbed" / "node.sh"
    try:
        proc, job = _in_allocation(tmp_path, env, ["-N3", "-c2"], f"""
            clusterctl up --quiet
            python driver.py {node_sh} {tmp_path}
            clusterctl status
            clusterctl down
        """, timeout=300)
    finally:
        subprocess.run(["bash", str(node_sh), "heal", "node2"], capture_output=True)
    out = proc.stdout
    print(out)
    assert proc.returncode == 0, out + proc.stderr
    assert "MADE node3" in out
    assert "KILLED True" in out, "tasks running on the killed node must be retried"
    rebuilt = next(line for line in out.splitlines() if line.startswith("REBUILT")).split()
    assert rebuilt[1] in ("node1", "node2") and float(rebuilt[3]) == 3.0 * 2**21
    assert "ACTOR 1 node3" in out
    assert "PUT lost: object" in out and "held only by node node3" in out
    restarted = next(line for line in out.splitlines() if line.startswith("RESTARTED")).split()
    assert restarted[1] == "5" and restarted[2] in ("node1", "node2")
    cut = next(line for line in out.splitlines() if line.startswith("CUT")).split()
    assert cut[1] == "True"
    assert "REJOINED node2" in out, "the healed node must come back"
    wait_until(lambda: not our_processes(job), 30, "shoal processes to leave the nodes")
    assert not job_alive(job)
