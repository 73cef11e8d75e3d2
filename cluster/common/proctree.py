"""Process trees through ``/proc`` (Linux): a worker ends what its last task left behind,
and the daemon kills a worker with everything below it. Standard library only (workers
import it)."""

from __future__ import annotations

import os
import signal


def children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux; [] elsewhere or when it is gone).

    Reads ``/proc/PID/task/TID/children`` (a child is listed under the thread that forked
    it), falling back to a scan of every ``/proc/N/stat`` on kernels without that file.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            return _children_by_scan(pid)
        except (OSError, ValueError):
            continue
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    found.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), as /proc shows them now."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def kill_tree(pid: int, include_root: bool = True, rounds: int = 20) -> None:
    """SIGKILL every descendant of `pid` (and `pid` itself with `include_root`).

    The root is stopped first (SIGSTOP) so it can neither fork nor reap while its tree is
    read; the tree is read again until nothing is left (a process that was forking while
    we killed its parent's tree shows up on the next round), at most `rounds` times.
    """
    if include_root:
        _signal(pid, signal.SIGSTOP)
    for _ in range(rounds):
        found = descendants(pid)
        if not found:
            break
        for child in found:
            _signal(child, signal.SIGKILL)
    if include_root:
        _signal(pid, signal.SIGKILL)
        _signal(pid, signal.SIGCONT)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
