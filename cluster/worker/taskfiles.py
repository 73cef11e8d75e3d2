"""A task's output, in the worker: what its ``print()`` writes (:class:`TaskOutput`), and
for a bash app the temporary spool that captures what it prints when no
``stdout=``/``stderr=`` target is given, and the targets it writes."""

from __future__ import annotations

import os
import tempfile
import time
from typing import IO, Any

from cluster.common.messages import Log


class TaskOutput:
    """Stands in for sys.stdout/sys.stderr while a task runs: forwards text to the daemon
    (which prints it in the driver; at a newline once `flush_seconds` passed since the
    last time, and at the task's end) and writes it to the task's log file. `worker` is
    the :class:`cluster.worker.worker.Worker`."""

    def __init__(self, worker: Any, is_stderr: bool, flush_seconds: float) -> None:
        self._worker = worker
        self._flush_seconds = flush_seconds
        self._is_stderr = is_stderr
        self._parts: list[str] = []
        self._last = time.monotonic()
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._parts.append(text)
        self._worker.log_to_file(text)
        if "\n" in text and time.monotonic() - self._last > self._flush_seconds:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            self._worker.send(Log(self._worker.task_id, self._worker.task_name, text,
                                  self._is_stderr))
        self._last = time.monotonic()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("task output has no file descriptor")

    def writable(self) -> bool:
        return True


def spool_file(log_dir: str) -> Any:
    """An anonymous temporary file for a bash app's output: in the log directory (node
    local, the user's), else the system's temporary directory."""
    if log_dir:
        try:
            return tempfile.TemporaryFile(dir=log_dir)
        except OSError:
            pass
    return tempfile.TemporaryFile()


def read_spool(f: Any) -> str:
    """What a bash app wrote to a temporary output file ("" for None)."""
    if f is None:
        return ""
    f.seek(0)
    return f.read().decode("utf-8", "replace")


def tail(path: str, size: int = 8192) -> str:
    """The end of a file (at most `size` bytes), as text; "" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def open_target(target: tuple[str, str] | None) -> IO[Any] | None:
    """The opened target file of a stream (its directories made), or None for none."""
    if not target or not target[0]:
        return None
    path, mode = target
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return open(path, mode or "w", encoding="utf-8")  # noqa: SIM115
