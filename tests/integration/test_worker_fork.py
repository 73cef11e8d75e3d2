"""Workers forked by the daemon's zygote (cluster/node/forkserver.py, cluster/worker/zygote.py)
are as clean as exec'd ones, die with their daemon, report how they died, and when the
zygote is gone the daemon execs its workers instead."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

import api

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]


def describe() -> dict:
    """What an exec'd and a forked worker must agree on (and a few things they must not)."""
    import ctypes
    import random
    import signal as sig
    import sys as s

    libc = ctypes.CDLL(None)
    value = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(value), 0, 0, 0)   # PR_GET_PDEATHSIG
    subreaper = ctypes.c_int(0)
    libc.prctl(37, ctypes.byref(subreaper), 0, 0, 0)   # PR_GET_CHILD_SUBREAPER
    listing = os.listdir("/proc/self/fd")  # (this listing holds one fd itself)
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = [a for a in f.read().decode().split("\0") if a]
    umask = os.umask(0)
    os.umask(umask)
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
        "fds": _fd_kinds(listing), "stdin": os.readlink("/proc/self/fd/0"),
        "cmdline": cmdline[1:3], "argv0": s.argv[0],
        "main": getattr(s.modules["__main__"], "__file__", None),
        "path": [p for p in s.path if "pytest" not in p], "cwd": os.getcwd(), "umask": umask,
        "env": {k: v for k, v in os.environ.items()
                if k not in ("SHOAL_LOG_DIR", "SHOAL_WORKER_FORK")},  # (what the test varies)
        "signals": {n: str(sig.getsignal(getattr(sig, n)))
                    for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGCHLD", "SIGPIPE", "SIGUSR1")},
        "pdeathsig": value.value, "subreaper": subreaper.value,
        "rpc": sorted(m for m in s.modules if m.split(".")[0] in ("grpc", "google")),
        "forked": "cluster.worker.zygote" in s.modules, "random": random.random(),
        "secret": b"SHOAL_SECRET" in open("/proc/self/environ", "rb").read(),  # noqa: SIM115
    }


def _fd_kinds(listing: list[str]) -> list[str]:
    """What each open fd is ("socket", "pipe", "/dev/null", a path; a datagram-style Unix
    socket, as the zygote's, is "seqpacket"), sorted."""
    seqpacket = set()
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[4] == "0005":
                seqpacket.add(parts[6])
    kinds = []
    for fd in listing:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, closed by now
        inode = target.partition("[")[2].rstrip("]")
        kinds.append("seqpacket" if inode in seqpacket else target.split(":")[0])
    return sorted(kinds)


class Probe:
    """An actor: each one gets a worker of its own."""

    def describe(self) -> dict:
        return describe()


def _node_process() -> psutil.Process:
    (node,) = [p for p in psutil.Process().children()
               if "cluster.node" in " ".join(p.cmdline())]
    return node


def _zygote(node: psutil.Process) -> psutil.Process | None:
    found = [p for p in node.children() if p.name() == "shoal-zygote"]
    return found[0] if found else None


def _start(fork: bool) -> None:
    api.shutdown()
    old = os.environ.get("SHOAL_WORKER_FORK")
    os.environ["SHOAL_WORKER_FORK"] = "1" if fork else "0"
    try:
        api.init(num_cpus=2, log_to_driver=False)
    finally:
        if old is None:
            os.environ.pop("SHOAL_WORKER_FORK")
        else:
            os.environ["SHOAL_WORKER_FORK"] = old


def _probes(n: int) -> list[dict]:
    probe = api.actor(num_cpus=0)(Probe)
    actors = [probe() for _ in range(n)]
    out = [a.describe().result(timeout=60) for a in actors]
    for a in actors:
        api.kill(a)
    return out


def test_a_forked_worker_is_as_clean_as_an_exec_d_one(no_session):
    _start(fork=True)
    node = _node_process()
    assert _zygote(node) is not None
    forked = [api.python_app(describe)().result(timeout=60), *_probes(2)]
    _start(fork=False)
    exec_node = _node_process()
    assert _zygote(exec_node) is None
    execd = [api.python_app(describe)().result(timeout=60), *_probes(1)]
    api.shutdown()

    assert all(f["forked"] for f in forked) and not any(e["forked"] for e in execd)
    assert len({f["random"] for f in forked}) == len(forked), "random state not reseeded"
    for f in forked:
        assert f["ppid"] == node.pid            # the daemon's child, as before
        assert f["pgid"] == f["sid"] == f["pid"]  # its own session and process group
        assert f["rpc"] == [], f"a forked worker holds {f['rpc']}"
    assert not any(w["secret"] for w in forked + execd), "the secret reached a worker"
    assert all(e["ppid"] == exec_node.pid for e in execd)
    # a task's worker against a task's, an actor's against an actor's (which also holds
    # its direct-call sockets: their connections come and go with callers)
    for f, reference in ((forked[0], execd[0]), (forked[1], execd[1]), (forked[2], execd[1])):
        for key in ("stdin", "cmdline", "argv0", "main", "path", "cwd", "umask",
                    "env", "signals", "pdeathsig", "subreaper"):
            assert f[key] == reference[key], (key, f[key], reference[key])
        assert "seqpacket" not in f["fds"], f["fds"]   # nothing of the zygote's
        assert [k for k in f["fds"] if k != "socket"] == \
            [k for k in reference["fds"] if k != "socket"], (f["fds"], reference["fds"])
    assert forked[0]["fds"] == execd[0]["fds"]
    assert execd[0]["cmdline"] == ["-m", "cluster.worker"]
    assert execd[0]["pdeathsig"] == signal.SIGKILL and execd[0]["subreaper"] == 1


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _which() -> tuple[int, bool]:
    return os.getpid(), "cluster.worker.zygote" in sys.modules


def test_crash_is_reported_and_the_replacement_is_forked_then_exec_d_without_zygote(
        no_session, monkeypatch):
    # The pool's workers are the subject: one-at-a-time tasks must not go to a leased one.
    monkeypatch.setenv("SHOAL_LEASE", "0")
    _start(fork=True)
    crash = api.python_app(_crash)
    which = api.python_app(_which)
    with pytest.raises(api.WorkerCrashedError, match=r"exit code -9"):
        crash().result(timeout=60)
    pids = {which().result(timeout=60) for _ in range(4)}
    assert all(forked for _, forked in pids)

    node = _node_process()
    zygote = _zygote(node)
    assert zygote is not None
    zygote.kill()   # (a zombie until the daemon next asks it for a worker)
    with pytest.raises(api.WorkerCrashedError, match=r"exit code -9"):
        crash().result(timeout=60)   # the replacement cannot be forked any more
    deadline = time.monotonic() + 60
    seen: set[tuple[int, bool]] = set()
    while not any(not forked for _, forked in seen) and time.monotonic() < deadline:
        seen |= {which().result(timeout=60) for _ in range(4)}
    assert any(not forked for _, forked in seen), seen
    api.shutdown()


def test_forked_workers_and_the_zygote_die_with_their_daemon(no_session):
    _start(fork=True)
    api.python_app(describe)().result(timeout=60)
    node = _node_process()
    below = node.children(recursive=True)
    assert len(below) >= 3, below   # the zygote and two workers
    node.kill()
    gone, alive = psutil.wait_procs(below, timeout=20)
    assert not alive, f"outlived their daemon: {alive}"
    api.shutdown()
