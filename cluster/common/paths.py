"""Where shoal keeps things on disk, and the sweeping of what crashed clusters left.

- cluster files: ``$SHOAL_HOME/clusters/<id>.json`` (``SHOAL_HOME`` defaults to ~/.shoal)
- node-local runtime state (sockets, object store): ``/dev/shm/shoal-<user>/<id>``, 0700,
  short enough for the 107-byte Unix socket limit
- logs: ``<tmp>/shoal-<user>/logs/<id>``, kept after ``clusterctl down``
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile

OWNER_FILE = "owner.pid"
#: The directory holding the `api` and `cluster` packages (put on child processes' path).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shadowing_hint(cwd: str | None = None) -> str:
    """Why ``python -m cluster.node`` may fail when started in `cwd` (default: the
    current directory): a ``cluster`` or ``api`` directory there that is not shoal's comes
    first on such a process's path. An empty string when there is none.

    >>> shadowing_hint(PACKAGE_ROOT)
    ''
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    if cwd == PACKAGE_ROOT:
        return ""
    found = [name for name in ("cluster", "api") if os.path.isdir(os.path.join(cwd, name))]
    if not found:
        return ""
    names = " and ".join(f"{os.path.join(cwd, n)}/" for n in found)
    return (f"{names} hides shoal's own package of that name from the processes it starts "
            "in this directory: start from another directory (or rename it)")


def user() -> str:
    """The current user's name (uid when it has none)."""
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def shoal_home() -> str:
    """Root of per-user state (cluster files)."""
    return os.environ.get("SHOAL_HOME") or os.path.join(os.path.expanduser("~"), ".shoal")


def _private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user (uid {st.st_uid}); "
                              "set SHOAL_RUNTIME_ROOT to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def runtime_root() -> str:
    """Per-user runtime root on shared memory (or the temp dir when there is none)."""
    base = os.environ.get("SHOAL_RUNTIME_ROOT")
    if not base:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
            else tempfile.gettempdir()
        base = os.path.join(base, f"shoal-{user()}")
    return _private_dir(base)


def runtime_dir(cluster_id: str, node: str = "") -> str:
    """The 0700 runtime directory of one cluster (and node, when several share a host)."""
    name = f"{cluster_id}-{node}" if node else cluster_id
    path = _private_dir(os.path.join(runtime_root(), name))
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        f.write(str(os.getpid()))
    return path


def log_dir(cluster_id: str) -> str:
    """Where a cluster's head, daemon and task logs go."""
    base = _private_dir(os.path.join(tempfile.gettempdir(), f"shoal-{user()}"))
    path = os.path.join(base, "logs", cluster_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def spill_root() -> str:
    """Where node stores spill objects: node-local disk (the temp directory), 0700."""
    base = os.environ.get("SHOAL_SPILL_ROOT") or os.path.join(tempfile.gettempdir(),
                                                               f"shoal-{user()}", "spill")
    os.makedirs(os.path.dirname(base), mode=0o700, exist_ok=True)
    return _private_dir(base)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove runtime directories whose owning process is gone; returns what was removed."""
    removed: list[str] = []
    try:
        root = runtime_root()
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        try:
            with open(os.path.join(path, OWNER_FILE)) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid and not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            for leftover in (name, f"{name}-store"):  # spills, and a store on disk
                shutil.rmtree(os.path.join(spill_root(), leftover), ignore_errors=True)
            removed.append(path)
    return removed


#: The run history's file name inside a cluster's log directory.
HISTORY_FILE = "history.sqlite"


def history_file(log_dir: str) -> str:
    """The run history of the cluster whose log directory is `log_dir` (written by the
    head's history writer, read by ``clusterctl history`` and the dashboard)."""
    return os.path.join(log_dir, HISTORY_FILE)
