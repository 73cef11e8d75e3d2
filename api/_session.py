"""The driver's session: which cluster we are connected to, and the embedded one we own."""

from __future__ import annotations

import atexit
import io
import json
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from api import _errors
from api._futures import stale_message
from cluster.common import auth, bytecode, clusterfile, paths, serialization
from cluster.common.paths import PACKAGE_ROOT

_lock = threading.RLock()
_state: dict[str, Any] = {"client": None, "process": None, "run_dir": None, "info": None,
                          "ended": 0}
#: Called with the client at the end of each session, before it disconnects (memoization
#: writes its last checkpoint there).
_end_hooks: list[Any] = []


def on_end(hook: Any) -> None:
    """Call `hook(client)` when a session ends, before the client closes (once per hook)."""
    if hook not in _end_hooks:
        _end_hooks.append(hook)


@dataclass
class ClusterInfo:
    """What :func:`api.init` connected to."""

    address: str
    cluster_id: str
    embedded: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    log_dir: str = ""
    #: The dashboard's address with its token ("" when the cluster serves none).
    dashboard_url: str = ""


class RunDir:
    """Parsl-style ``runinfo/NNN`` directory for per-task files, made on first use."""

    def __init__(self, base: str | None) -> None:
        self.base = os.path.abspath(base or "runinfo")
        self._path: str | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        """The run's own directory (created now if needed)."""
        if self._path is None:
            with self._lock:
                if self._path is None:
                    os.makedirs(self.base, exist_ok=True)
                    numbers = [int(n) for n in os.listdir(self.base) if n.isdigit()]
                    number = max(numbers, default=-1) + 1
                    while True:
                        path = os.path.join(self.base, f"{number:03d}")
                        try:
                            os.makedirs(path)
                            break
                        except FileExistsError:
                            number += 1
                    self._path = path
        return self._path

    def auto_logname(self, task_id: int, name: str, stream: str) -> str:
        """``<run dir>/task_logs/<block>/task_<n>_<name>.<stream>``."""
        seq = task_id & 0xFFFFFFFFFF
        folder = os.path.join(self.path, "task_logs", f"{seq // 10000:04d}")
        return os.path.join(folder, f"task_{seq:04d}_{name}.{stream}")


#: ``api.init``, registered by the api package, so modules it imports (the Executor) can
#: start a session without importing the package back (no import circle).
_initializer: list[Any] = []


def set_initializer(init: Any) -> None:
    """Register the function that starts a session (``api.init``)."""
    _initializer[:] = [init]


def initialize(address: str | None) -> None:
    """Start a session as ``api.init(address)`` does."""
    _initializer[0](address)


def lock() -> threading.RLock:
    """The lock that serialises init and shutdown of the session."""
    return _lock


def current() -> tuple[Any, Any]:
    """(the connected client or None, its ClusterInfo or None)."""
    return _state["client"], _state["info"]


def client() -> Any:
    """The connected client, or a clear error when init() was not called."""
    current = _state["client"]
    if current is None or current.closed:
        worker = sys.modules.get("cluster.worker.worker")
        if worker is None or worker.CURRENT is None:
            raise _errors.ShoalError("not connected: call api.init() first")
        from api import _nested  # inside an app: its node's daemon reaches the head

        current = _nested.worker_client(worker.CURRENT)
    current.check_connected()
    return current


def is_stale(owner: Any) -> bool:
    """True when `owner` (the client that made a future, ref or handle) has been closed:
    the object belongs to an earlier session. None (made elsewhere) is never stale."""
    return owner is not None and owner.closed


def check_ref(ref: Any) -> None:
    """ShoalError if a future or ref (or actor handle) belongs to an earlier session."""
    owner = ref._owner if isinstance(ref, serialization.ObjectRef) else \
        getattr(ref, "_client", None)
    if is_stale(owner):
        raise _errors.ShoalError(stale_message(repr(ref)))


class _StaleRefs(serialization.RefIds):
    """persistent_id raising for a future or ref of an earlier session (actor handles
    check themselves in their __reduce__)."""

    def persistent_id(self, obj: Any) -> int | None:
        if getattr(type(obj), "_shoal_ref", False):
            check_ref(obj)
            return 0
        return None


class _StalePickler(_StaleRefs, pickle.Pickler):
    pass


class _StaleCloudPickler(_StaleRefs, cloudpickle.CloudPickler):
    pass


def check_owned(value: Any) -> None:
    """ShoalError if `value` holds, anywhere inside, a future, ref or actor handle of an
    earlier session. Free until a session has ended in this process; then one more
    pickling pass over values that hold refs (callers check only those)."""
    if not _state["ended"]:
        return
    for kind in (_StalePickler, _StaleCloudPickler):
        try:
            kind(io.BytesIO(), protocol=serialization.PROTOCOL,
                 buffer_callback=_drop).dump(value)
            return
        except _errors.ShoalError:
            raise
        except Exception:  # noqa: BLE001 - the real pickling succeeded: try the other one
            continue


def _drop(buffer: Any) -> None:
    """Out-of-band buffers are not copied by the check pass."""


def run_dir() -> RunDir:
    """The run directory of this session."""
    current = _state["run_dir"]
    if current is None:
        current = _state["run_dir"] = RunDir(None)
    return current


def start_embedded(num_cpus: int | None, num_gpus: int | None,
                   resources: dict[str, float] | None, timeout: float,
                   store_bytes: int | None = None) -> tuple[Any, dict]:
    """Start a head+daemon process beside the driver; it exits when our stdin pipe closes."""
    secret = auth.new_secret()
    cluster_id = clusterfile.new_local_id()
    env = dict(os.environ)
    env[auth.ENV_VAR] = secret
    if store_bytes:
        env["SHOAL_OBJECT_STORE_BYTES"] = str(int(store_bytes))
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in parts:
        env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *parts])
    bytecode.refresh()  # (the head, its workers and zygote would each compile stale modules)
    cmd = [sys.executable, "-m", "cluster.node", "--head", "--daemon", "--cluster-id", cluster_id,
           "--watch-stdin", "--dashboard"]   # (started on its first request: costs no start)
    if num_cpus is not None:
        cmd += ["--num-cpus", str(int(num_cpus))]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(int(num_gpus))]
    if resources:
        cmd += ["--resources", json.dumps(resources)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    stderr_tail = _forward_stderr(proc.stderr)
    deadline = time.monotonic() + timeout
    line, eof = b"", False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            eof = not line
            break
    if not line:
        exited = proc.poll() is not None or (eof and _exits_soon(proc))
        proc.kill()
        proc.wait()
        if exited:
            stderr_tail.join(5)
            last = [t for t in stderr_tail.lines if t.strip()]
            why = last[-1].strip() if last else "it printed nothing"
            hint = paths.shadowing_hint()
            raise _errors.ConnectionError(
                f"the local cluster exited at start (exit code {proc.returncode}): {why}"
                + (f"; {hint}" if hint else ""))
        raise _errors.ConnectionError(
            f"the local cluster did not start within {timeout:g}s; "
            "see the log files under the temp directory's shoal-<user>/logs")
    info = json.loads(line)
    info.update(secret=secret, cluster_id=cluster_id)
    return proc, info


class _StderrTail(threading.Thread):
    """Copies a child's stderr to ours (as before it was captured) and keeps its last lines,
    so an early exit can be reported with the child's own error."""

    def __init__(self, stream: Any) -> None:
        super().__init__(name="shoal-embedded-stderr", daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            text = raw.decode(errors="replace")
            self.lines = [*self.lines[-19:], text]
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        self.stream.close()


def _forward_stderr(stream: Any) -> _StderrTail:
    tail = _StderrTail(stream)
    tail.start()
    return tail


def _exits_soon(proc: Any) -> bool:
    """True when `proc` (whose stdout just closed) exits within a moment."""
    try:
        proc.wait(2)
        return True
    except subprocess.TimeoutExpired:
        return False


def stop_embedded(proc: Any) -> None:
    """Close the embedded cluster's stdin and wait for it (killing it after 5 s)."""
    if proc is None:
        return
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(2)
    except Exception:  # noqa: BLE001
        pass


def set_session(client_obj: Any, process: Any, info: ClusterInfo, run_base: str | None) -> None:
    """Record the session (and make sure it is torn down at exit)."""
    _state.update(client=client_obj, process=process, info=info, run_dir=RunDir(run_base))
    if not _state.get("atexit"):
        atexit.register(end_session)
        _state["atexit"] = True


def end_session() -> None:
    """Disconnect and stop the embedded cluster, if any."""
    with _lock:
        current, proc = _state["client"], _state["process"]
        _state.update(client=None, process=None, info=None)
        if current is not None:
            _state["ended"] += 1
    if current is not None:
        for hook in list(_end_hooks):
            try:
                hook(current)
            except Exception:  # noqa: BLE001 - the session ends regardless
                import logging

                logging.getLogger("api.session").exception("error ending the session")
        current.close()
    stop_embedded(proc)
