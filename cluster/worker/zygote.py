"""The zygote: a small process that forks worker processes for its daemon.

Why: an exec'd worker (``python -m cluster.worker``) spends 0.06-0.09 CPU-s starting an
interpreter and importing cloudpickle, the store and the worker (measured with
``python -X importtime`` and rusage on the 2-core test machine); a fork of a process that
has done that already costs a few milliseconds. The daemon cannot fork workers itself once
it has imported gRPC (gRPC's threads and fork do not mix), so before it does, it forks this
process (:mod:`cluster.node.forkserver`), which imports the worker and then forks a worker
for each request.

Protocol, over a ``SOCK_SEQPACKET`` socketpair (one message per datagram, marshal):
daemon -> zygote ``{"env": {...}, "cwd": str}`` with the worker's end of its socketpair
attached (``SCM_RIGHTS``); zygote -> daemon ``("pid", pid)``. EOF: the daemon is gone, the
zygote exits (``PR_SET_PDEATHSIG`` also kills it).

The worker is the daemon's child, as an exec'd one is: the zygote forks an intermediate
that forks the worker and exits at once, and the daemon is a child subreaper while it
waits for the answer (:func:`cluster.node.forkserver.spawn`), so the worker is reparented
to it. The daemon then reaps it (exit codes as before), its ``PR_SET_PDEATHSIG`` is the
daemon's death (the zygote's own death takes no worker with it), and ``ps`` shows it as
``python -m cluster.worker FD`` (its argv area is rewritten).

A forked worker is made as clean as an exec'd one (:func:`_become_worker`): its own session
(``start_new_session``), stdin on ``/dev/null``, only fds 0-2 and its socket open, the
daemon's signal handlers reset, its environment and ``sys.path`` as ``PYTHONPATH`` says,
``__main__`` and ``sys.argv`` as ``python -m cluster.worker FD`` has them, ``random``
reseeded (the stdlib does it at fork), and, as before, ``PR_SET_PDEATHSIG``. What a fork
cannot change, the daemon checks before asking (:func:`cluster.node.forkserver.spawn`):
variables the interpreter or the dynamic linker read only at start (``PYTHON*``,
``LD_*``) must be the zygote's.
Forked workers share the zygote's string-hash seed (an exec'd one draws its own).

This module runs in a worker-to-be: it must not import gRPC or protobuf.
"""

from __future__ import annotations

import marshal
import os
import signal
import socket
import sys
import time
import types
from typing import Any

#: Linux prctl option (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: The cluster secret's variable (cluster.common.auth.ENV_VAR; not imported: no hmac here).
SECRET_ENV = "SHOAL_SECRET"
#: Largest request (an environment) the zygote accepts.
MAX_MESSAGE = 1 << 20


def _die_with(parent: int) -> None:
    """SIGKILL when our parent dies; exit now if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def serve(sock: socket.socket, daemon_pid: int) -> None:
    """The zygote's loop (never returns): fork a worker per request."""
    _die_with(daemon_pid)
    saved: dict[int, Any] = {sig: signal.getsignal(sig)
                             for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C and Slurm's SIGTERM are for the daemon (and reach workers directly): a zygote
    # that died of them would leave the daemon to exec its later workers.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # not the driver's pipe: the zygote never reads stdin
    os.close(null)
    _forget_secret()
    import importlib.util

    import cluster.worker.worker  # noqa: F401 - imported once, here, for every fork

    main_spec = importlib.util.find_spec("cluster.worker.__main__")  # (not run: it would serve)
    _set_name(b"shoal-zygote")
    startup_path = list(sys.path)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
        except InterruptedError:
            continue
        except OSError:
            data, fds = b"", []
        if not data:
            os._exit(0)  # the daemon is gone
        request = marshal.loads(data)
        pid_r, pid_w = os.pipe()
        middle = os.fork()
        if middle == 0:  # the intermediate: fork the worker, say its pid, exit
            os.close(pid_r)
            child = os.fork()
            if child == 0:
                os.close(pid_w)
                _become_worker(request, fds[0], sock, daemon_pid, main_spec, startup_path,
                               saved)
            os.write(pid_w, child.to_bytes(4, "little"))
            os._exit(0)
        os.close(pid_w)
        for fd in fds:
            os.close(fd)
        raw = os.read(pid_r, 4)
        os.close(pid_r)
        os.waitpid(middle, 0)  # gone: the worker is the daemon's child now
        try:
            sock.send(marshal.dumps(("pid", int.from_bytes(raw, "little") if raw else 0)))
        except OSError:
            os._exit(0)


def _stat_pair(at: int) -> tuple[int, int]:
    """Two consecutive numbers of ``/proc/self/stat``, counted from the first field after
    the command name (which may hold spaces, so it is skipped by its closing bracket)."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[at]), int(fields[at + 1])


def _forget_secret() -> None:
    """Drop the cluster secret the daemon had in its environment when it forked us, from
    ``os.environ`` and from the environment block ``/proc/PID/environ`` shows (forks copy
    it; an exec'd worker never had it: workers never call the cluster's RPCs)."""
    os.environ.pop(SECRET_ENV, None)
    try:
        import ctypes

        start, end = _stat_pair(47)  # env_start, env_end (fields 50, 51 of proc(5))
        block = ctypes.string_at(start, end - start)
        key = SECRET_ENV.encode() + b"="
        at = 0 if block.startswith(key) else block.find(b"\0" + key) + 1
        if at > 0 or block.startswith(key):
            stop = block.find(b"\0", at)
            stop = len(block) if stop < 0 else stop
            ctypes.memset(start + at, ord("_"), stop - at)  # an entry with no "=": no value
    except (OSError, ValueError, IndexError, AttributeError):
        pass


def _set_name(name: bytes) -> None:
    """The process name ``top`` and ``ps -o comm`` show (PR_SET_NAME, 15 bytes)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _set_cmdline(args: list[str]) -> None:
    """Rewrite this process's argv area (what ``/proc/PID/cmdline``, ``ps`` and psutil
    show) to `args`, padded with NULs; left as it is if `args` does not fit."""
    try:
        import ctypes

        start, end = _stat_pair(45)  # arg_start, arg_end (fields 48, 49 of proc(5))
        new = b"\0".join(a.encode() for a in args) + b"\0"
        if 0 < len(new) <= end - start:
            ctypes.memmove(start, new + b"\0" * (end - start - len(new)), end - start)
    except (OSError, ValueError, IndexError, AttributeError):
        pass


def _become_worker(request: dict[str, Any], fd: int, sock: socket.socket, daemon_pid: int,
                   main_spec: Any, startup_path: list[str], signals: dict[int, Any]) -> None:
    """In the forked child: become what ``python -m cluster.worker FD`` would be and run
    the worker. Never returns into the zygote's loop: the worker's end (a return, an
    exception, ``sys.exit``) leaves as ``SystemExit`` or that exception, through every
    frame up to the interpreter, which then exits as an exec'd worker does (atexit
    handlers, non-daemon threads joined, streams flushed, tracebacks printed)."""
    try:
        os.setsid()
        for sig, handler in signals.items():  # the daemon's, as an exec'd Python has them
            signal.signal(sig, handler)
        sock.close()
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 16)
        env = request["env"]
        old_pp = _path_entries(os.environ.get("PYTHONPATH", ""))
        os.environ.clear()
        os.environ.update(env)
        new_pp = _path_entries(env.get("PYTHONPATH", ""))
        sys.path[:] = ([startup_path[0]] + new_pp
                       + [p for p in startup_path[1:] if p not in old_pp and p not in new_pp])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        main = types.ModuleType("__main__")
        main.__spec__ = main_spec
        main.__file__ = main_spec.origin
        main.__loader__ = main_spec.loader
        main.__package__ = "cluster.worker"
        sys.modules["__main__"] = main
        sys.argv[:] = [main_spec.origin, str(fd)]
        _set_cmdline([sys.executable, "-m", "cluster.worker", str(fd)])
        _set_name(os.path.basename(sys.executable).encode())  # (not the zygote's name)
        deadline = time.monotonic() + 10
        while os.getppid() != daemon_pid:  # until the intermediate has exited
            if time.monotonic() > deadline or os.getppid() == 1:
                os._exit(1)  # the daemon died meanwhile
            time.sleep(0.0005)
        _die_with(daemon_pid)
        from cluster.worker.worker import main as worker_main
    except BaseException:  # noqa: BLE001 - never back into the zygote's loop
        import traceback

        traceback.print_exc()
        os._exit(1)
    worker_main()
    raise SystemExit(0)


def _path_entries(value: str) -> list[str]:
    """``PYTHONPATH`` as ``sys.path`` holds it (absolute, as site makes them)."""
    return [os.path.abspath(p) for p in value.split(os.pathsep) if p]
