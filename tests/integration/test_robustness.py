"""Bad input with a valid secret, load, many drivers, and up/down cycles leave nothing
behind (issue 7's checks that do not need the object store)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import api
from cluster.common import clusterfile, wire
from cluster.common.protocol import pb


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-m", "cluster.cli", "up", "--num-cpus", "2",
                    "--cluster-id", "robust"], check=True, capture_output=True, env=env)
    cf = clusterfile.read(clusterfile.path_for("robust"))
    yield cf
    subprocess.run([sys.executable, "-m", "cluster.cli", "down", "--cluster", "robust"],
                   capture_output=True, env=env)


def _lane(cf) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(cf.unix_socket)
    sock.sendall(wire.frame(cf.secret.encode()))
    return sock


def _head_answers(cf) -> bool:
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata

    with grpc.insecure_channel(cf.address) as channel:
        reply = shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(cf.secret), timeout=10)
    return reply.cluster_id == "robust"


resources = st.builds(pb.Resources, cpus=st.floats(allow_nan=True, allow_infinity=True),
                      gpus=st.floats(-1, 4), custom=st.dictionaries(st.text(max_size=5),
                                                                    st.floats(), max_size=2))
specs = st.builds(
    pb.TaskSpec, task_id=st.integers(0, 2**64 - 1), fn_id=st.binary(max_size=16),
    fn_blob=st.binary(max_size=32), args=st.binary(max_size=64),
    deps=st.lists(st.integers(0, 2**64 - 1), max_size=3), resources=resources,
    kind=st.sampled_from([0, 1, 2, 3]), num_nodes=st.integers(0, 4),
    actor_id=st.integers(0, 2**64 - 1), max_retries=st.integers(0, 3))
messages = st.builds(
    pb.DriverToHead, submit=st.lists(specs, max_size=3),
    release=st.lists(st.integers(0, 2**64 - 1), max_size=3),
    kill_actor=st.lists(st.integers(0, 2**64 - 1), max_size=2),
    get=st.lists(st.builds(pb.GetRequest, request_id=st.integers(0, 100),
                           ids=st.lists(st.integers(0, 2**64 - 1), max_size=2)), max_size=2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(first=st.one_of(st.binary(max_size=64), messages.map(lambda m: m.SerializeToString())),
       rest=st.lists(st.one_of(st.binary(max_size=64),
                               messages.map(lambda m: m.SerializeToString())), max_size=3))
def test_malformed_and_hostile_messages_never_crash_the_head(target, first, rest):
    """Authenticated garbage and odd-but-valid messages: the head drops the connection or
    answers, and keeps serving."""
    sock = _lane(target)
    hello = pb.DriverToHead(hello=pb.DriverHello(hostname="fuzz", pid=1)).SerializeToString()
    try:
        sock.sendall(b"".join(wire.frame(b) for b in [hello, first, *rest]))
        sock.sendall(wire.frame(b"\xff" * 3))  # and a truncated frame at the end
    except OSError:
        pass  # the head may already have closed a malformed connection
    sock.close()
    assert _head_answers(target)


def test_truncated_frames_and_huge_lengths(target):
    for junk in [b"\x01\x00", wire.HEADER.pack(2**31 + 5) + b"xx", b"\x00" * 4096]:
        sock = _lane(target)
        try:
            sock.sendall(junk)
        except OSError:
            pass
        sock.close()
    assert _head_answers(target)


def test_nan_resources_are_refused_not_scheduled(target, no_session):
    api.init(target.path)

    @api.python_app(num_cpus=1)
    def fine():
        return 1

    from cluster.common import serialization

    client = api._session.client()
    spec = pb.TaskSpec(task_id=client.new_id(), fn_id=b"x" * 16,
                       args=serialization.dumps(((), {})),
                       resources=pb.Resources(cpus=float("nan")), name="nan")
    fut = api.AppFuture(spec.task_id, "nan", client)
    client.submit(spec, serialization.dumps_function(lambda: 1), fut)
    with pytest.raises(api.ResourceUnavailableError, match="invalid resource"):
        fut.result(timeout=30)
    assert fine().result(timeout=30) == 1


def test_100k_queued_tasks_complete_with_bounded_head_memory(target, no_session):
    api.init(target.path, log_to_driver=False)

    @api.python_app
    def noop(i):
        return None

    head = psutil.Process(target.head_pid)
    before = head.memory_info().rss
    peak = before
    futs = [noop(i) for i in range(100_000)]
    for i, fut in enumerate(futs):
        fut.result(timeout=300)
        if i % 10_000 == 0:
            peak = max(peak, head.memory_info().rss)
    del futs
    growth = (peak - before) / 2**20
    print(f"head RSS {before / 2**20:.0f} MB -> peak {peak / 2**20:.0f} MB with 100,000 tasks")
    assert growth < 400, f"head grew {growth:.0f} MB for 100,000 queued no-op tasks"


def test_ten_drivers_at_once_all_complete(target, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        "import api, sys\napi.init(sys.argv[1], log_to_driver=False)\n"
        "@api.python_app\ndef sq(x):\n    return x * x\n"
        "print(sum(f.result() for f in [sq(i) for i in range(2000)]))\n")
    procs = [subprocess.Popen([sys.executable, str(script), target.path], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT})
             for _ in range(10)]
    outs = [p.communicate(timeout=240)[0].strip() for p in procs]
    assert outs == [str(sum(i * i for i in range(2000)))] * 10


def _ours() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if ("cluster.node" in cmd or "cluster.worker" in cmd) and \
                proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_twenty_up_workflow_down_cycles_leave_nothing(clusterctl, tmp_path):
    robust: set[int] = set()  # the module's own cluster, if it is up, is not a leak
    for cf in clusterfile.running():
        if cf.cluster_id == "robust":
            head = psutil.Process(cf.head_pid)
            robust = {head.pid, *(c.pid for c in head.children(recursive=True))}
    script = tmp_path / "work.py"
    script.write_text("import api, sys\napi.init(sys.argv[1])\n"
                      "@api.python_app\ndef f(x):\n    return x + 1\n"
                      "assert f(f(1)).result() == 3\n"
                      "@api.python_app\ndef big(n):\n    return bytes(n)\n"
                      "ref = api.put(bytes(3_000_000))\n"         # both land in the store
                      "assert len(big(2_000_000).result()) == 2_000_000\n")
    ports = set()
    for cycle in range(20):
        cid = f"cycle-{cycle}"
        up = clusterctl("up", "--num-cpus", "1", "--cluster-id", cid)
        assert up.returncode == 0, up.stderr
        cf = clusterfile.read(clusterfile.path_for(cid))
        ports.add(int(cf.address.rsplit(":", 1)[1]))
        run = subprocess.run([sys.executable, str(script), cf.path], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
        assert run.returncode == 0, run.stderr
        if cycle == 7:
            os.kill(cf.head_pid, signal.SIGKILL)
            time.sleep(0.3)
        assert clusterctl("down", "--cluster", cid).returncode == 0
        assert not os.path.exists(cf.runtime_dir)
    deadline = time.monotonic() + 15
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = [p for p in _ours() if p.pid not in robust]
    assert not leftover, [" ".join(p.cmdline()) for p in leftover]
    listening = {c.laddr.port for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert not (ports & listening), "a cluster's port is still open"
    assert not [c for c in clusterfile.running() if c.cluster_id.startswith("cycle-")]
    from cluster.common import paths

    for root in (paths.runtime_root(), paths.spill_root()):  # stores, sockets, spills
        assert not [n for n in os.listdir(root) if n.startswith("cycle-")], root


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_user_can_read_nothing_and_call_nothing(target, no_session):
    """As `nobody`: the cluster file, the runtime directory (with the driver socket), the
    object store (directory, object files, its socket), the spill directory and the log
    directory are closed; a call without the secret is refused, and so is a transfer."""
    import numpy as np

    from cluster.common import paths as runtime_paths

    api.init(target.path)
    ref = api.put(np.ones(2**20))
    node = next(iter(api._session.client().nodes.values()))
    store_file = os.path.join(node.store_dir, f"{ref.id:x}")
    assert os.path.exists(store_file)
    spill = os.path.join(runtime_paths.spill_root(),
                         os.path.basename(os.path.dirname(node.store_dir)))
    paths = [target.path, target.runtime_dir, target.unix_socket, target.log_dir,
             node.store_dir, store_file, os.path.join(node.store_dir, "objects.sock"), spill]
    host, port = node.store_address.rsplit(":", 1)
    code = textwrap.dedent(f"""
        import os, socket, sys
        sys.path.insert(0, {ROOT!r})
        results = []
        for path in {paths!r}:
            try:
                if os.path.isdir(path):
                    os.listdir(path)
                else:
                    open(path, "rb").read(1)
                results.append("READ " + path)
            except OSError:
                results.append("denied")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect({target.unix_socket!r})
            results.append("CONNECTED")
        except OSError:
            results.append("denied")
        import struct
        s = socket.create_connection(({host!r}, {port}), timeout=10)
        s.sendall(struct.pack("<I", 5) + b"guess" + b"G" + struct.pack("<QQ", {ref.id}, 0))
        try:
            answer = s.recv(100)
        except ConnectionResetError:  # hung up on us with our request unread
            answer = b""
        results.append("denied" if answer == b"" else "TRANSFERRED")
        import grpc
        from cluster.common import shoal_pb2_grpc
        from cluster.common.protocol import pb
        with grpc.insecure_channel({target.address!r}) as channel:
            try:
                shoal_pb2_grpc.HeadStub(channel).Status(pb.StatusRequest(), timeout=5)
                results.append("CALLED")
            except grpc.RpcError as err:
                results.append(err.code().name)
        print(" ".join(results))
    """)
    # Our interpreter lives under root's home; Debian's python3.11 imports the same wheels.
    import sysconfig

    python = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else sys.executable
    code = f"import sys; sys.path.insert(0, {sysconfig.get_paths()['purelib']!r})\n" + code
    out = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", code],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["denied"] * 10 + ["UNAUTHENTICATED"], out.stdout
    assert float(api.get(ref).sum()) == 2**20  # and the cluster is fine


def test_killed_driver_is_cleaned_up_and_others_keep_working(target, tmp_path, no_session):
    script = tmp_path / "doomed.py"
    script.write_text(textwrap.dedent("""
        import api, sys, time
        api.init(sys.argv[1])
        @api.python_app
        def slow(i):
            import time
            time.sleep(0.5)
            return i
        @api.actor
        class Mine:
            def ping(self):
                return "pong"
        m = Mine.options(name="doomed-actor")()
        m.ping().result()
        futs = [slow(i) for i in range(200)]
        waiting = slow(futs[-1])     # waits for a task that will be dropped with us
        print("submitted", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script), target.path], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "submitted"
    proc.kill()
    proc.wait()
    api.init(target.path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = _status(target)
        if status.tasks_queued == 0 and status.tasks_running == 0:
            break
        time.sleep(0.2)
    assert status.tasks_queued == 0 and status.tasks_running == 0, \
        "the dead driver's queued tasks must be dropped"
    with pytest.raises(ValueError, match="no live actor"):
        api.get_actor("doomed-actor")

    @api.python_app
    def alive():
        return "still serving"

    assert alive().result(timeout=30) == "still serving"


def _status(cf):
    import grpc

    from cluster.common import shoal_pb2_grpc
    from cluster.common.auth import call_metadata

    with grpc.insecure_channel(cf.address) as channel:
        return shoal_pb2_grpc.HeadStub(channel).Status(
            pb.StatusRequest(), metadata=call_metadata(cf.secret), timeout=10)
