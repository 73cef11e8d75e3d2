"""Files of a bash app's output, in the worker: the temporary spool that captures what
it prints when no ``stdout=``/``stderr=`` target is given, and the targets it writes."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any


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
