"""The daemon's side of its zygote (:mod:`cluster.worker.zygote`): workers by fork.

``python -m cluster.node --daemon`` calls :func:`start` first thing, before it imports
gRPC: it imports what both the daemon and its workers need (so that is done once), then
forks the zygote, which imports the rest of the worker and forks workers on request.
:func:`spawn` asks it for one and returns a :class:`ForkedProc`, which stands in for the
``subprocess.Popen`` of an exec'd worker (``pid``, ``poll``, ``wait``, ``returncode``):
the worker is this process's child, reaped here, as an exec'd one is.

Measured on the 2-core machine (rusage): a worker by exec costs 0.06-0.09 CPU-s, by fork a
few ms (see the README's Scale section for whole boots).

Fallback to exec (``python -m cluster.worker``), by :func:`spawn` returning None: with
``SHOAL_WORKER_FORK=0``; with no zygote (not Linux, a head-only process, a process that
had threads already); once the zygote died or stopped answering (every later worker is
exec'd); for an environment whose ``PYTHON*``/``LD_*`` variables differ from the
zygote's (the interpreter and the dynamic linker read those only when a process starts).
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

log = logging.getLogger("shoal.forkserver")
#: ``SHOAL_WORKER_FORK=0``: exec every worker (the previous behaviour).
FORK_ENV = "SHOAL_WORKER_FORK"
#: How long to wait for the zygote's answer before giving up on it.
REPLY_SECONDS = 10.0
#: Linux prctl option (linux/prctl.h).
PR_SET_CHILD_SUBREAPER = 36

# The modules both the daemon and a worker import (compared with `python -c "import
# sys, ...; print(sorted(sys.modules))"`): imported here, before the fork, they are
# loaded once for both.
SHARED_MODULES = (
    "cluster.common.messages", "cluster.common.wire", "cluster.common.serialization",
    "cluster.common.proctree", "cluster.store.objectformat", "cluster.store.objectstore",
    "subprocess", "tempfile", "inspect", "traceback", "ctypes")


class _Zygote:
    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.alive = True
        #: The variables a fork cannot change (read at start by python and ld.so).
        self.startup_env = startup_vars(os.environ)
        import ctypes

        self.libc = ctypes.CDLL(None, use_errno=True)

    def dead(self, why: str) -> None:
        if self.alive:
            log.warning("worker zygote (pid %d) %s: new workers are exec'd", self.pid, why)
        self.alive = False
        try:
            self.sock.close()
            os.waitpid(self.pid, os.WNOHANG)
        except (OSError, ChildProcessError):
            pass


_zygote: _Zygote | None = None


def startup_vars(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` that only a new process can change."""
    return {k: v for k, v in env.items()
            if k.startswith(("PYTHON", "LD_")) and k != "PYTHONPATH"}


def start() -> None:
    """Fork the zygote (call before importing gRPC, with no other thread running). In the
    child this never returns: it serves forks, and a forked worker leaves through
    ``SystemExit``. Does nothing where forking is off or impossible."""
    global _zygote
    if (os.environ.get(FORK_ENV, "1") == "0" or not sys.platform.startswith("linux")
            or threading.active_count() > 1 or _zygote is not None):
        return
    import importlib

    for name in SHARED_MODULES:
        importlib.import_module(name)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    daemon_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.close()
        from cluster.worker import zygote

        zygote.serve(theirs, daemon_pid)  # never returns normally
        os._exit(0)
    theirs.close()
    _zygote = _Zygote(ours, pid)


def running() -> bool:
    """Whether workers are forked (a zygote serves)."""
    return _zygote is not None and _zygote.alive


def spawn(env: dict[str, str], fd: int) -> ForkedProc | None:
    """Fork a worker holding `fd` (its end of the daemon's socketpair), with environment
    `env`; None if that cannot be done here (the caller then execs one)."""
    z = _zygote
    if z is None or not z.alive or startup_vars(env) != z.startup_env:
        return None
    # A child subreaper while the zygote's intermediate exits: its child, the worker,
    # becomes ours. (Only for these milliseconds: orphans of apps go where they went.)
    z.libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        socket.send_fds(z.sock, [marshal.dumps({"env": dict(env), "cwd": os.getcwd()})],
                        [fd])
        ready, _, _ = select.select([z.sock], [], [], REPLY_SECONDS)
        if not ready:
            z.dead("did not answer")
            return None
        data = z.sock.recv(1 << 16)
        if not data:
            z.dead("is gone")
            return None
        kind, pid = marshal.loads(data)
        if kind != "pid" or not pid:
            z.dead("could not fork")
            return None
        return ForkedProc(pid)
    except (OSError, ValueError, EOFError) as err:
        z.dead(f"failed ({err})")
        return None
    finally:
        z.libc.prctl(PR_SET_CHILD_SUBREAPER, 0)


class ForkedProc:
    """A forked worker: what the daemon uses of ``subprocess.Popen``, for a child that
    this process did not fork itself but was given (see :func:`spawn`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the code is lost
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code, as ``Popen.wait`` (raises ``TimeoutExpired``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        assert self.returncode is not None
        return self.returncode
