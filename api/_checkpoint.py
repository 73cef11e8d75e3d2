"""The checkpoint directory: memoized results that outlive the driver (and the allocation).

Layout of ``checkpoint_dir``::

    index.sqlite        SQLite in WAL mode: key -> (app, inline bytes | file name, size,
                        stdout, stderr, when)
    objects/<key>.obj   results too large to be inline (>= objectformat.INLINE_LIMIT),
                        in the object store's file format: read back mapped, zero-copy
                        for numpy arrays and Arrow tables (read-only, as store reads are)

Crash safety (a driver SIGKILLed at its walltime): a large result is written to
``objects/.tmp.<host>.<pid>.<key>``, fsynced and renamed into place *before* its index row
is committed, so a row never names a partial file; a row is one transaction (WAL: a commit
is atomic against a killed process). Leftover temp files of dead processes of this host,
and those of other hosts older than a day, are removed at open. A row whose file turns
out missing or unreadable is dropped and counts as a miss (the task runs again), never as
a wrong value.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from cluster.common import paths, serialization
from cluster.store import objectformat

_log = logging.getLogger("api.checkpoint")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    data BLOB,
    file TEXT,
    size INTEGER NOT NULL,
    stdout TEXT,
    stderr TEXT,
    created REAL NOT NULL
)
"""

#: A temporary file of another host's driver older than this is a leftover (seconds).
_FOREIGN_TEMP_AGE = 24 * 3600

#: Test-only: seconds to pause halfway through writing a result file (so a test can
#: SIGKILL the driver mid-write deterministically).
_STALL_ENV = "SHOAL_TEST_CHECKPOINT_STALL"


@dataclass
class Entry:
    """A result read from the checkpoint."""

    value: Any
    stdout: str | None
    stderr: str | None


@dataclass
class Record:
    """A finished result to write: its key, app name, value, and a bash app's files."""

    key: str
    app: str
    value: Any
    stdout: str | None = None
    stderr: str | None = None


class CheckpointStore:
    """One driver's handle on a checkpoint directory (several drivers may share one)."""

    def __init__(self, directory: str) -> None:
        if not isinstance(directory, str | os.PathLike) or not os.fspath(directory):
            raise ValueError(f"checkpoint_dir={directory!r}: expected a directory path")
        self.directory = os.path.abspath(os.fspath(directory))
        self.objects = os.path.join(self.directory, "objects")
        try:  # private: results can be anything the user computed (shared machines)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.makedirs(self.objects, mode=0o700, exist_ok=True)
        except OSError as err:
            raise ValueError(f"checkpoint_dir={directory!r}: cannot create it: "
                             f"{err.strerror}") from None
        self._lock = threading.Lock()
        self._prefix = f".tmp.{socket.gethostname()}."
        path = os.path.join(self.directory, "index.sqlite")
        try:
            if not os.path.exists(path):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, timeout=60.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed (only an OS crash may
            # lose the last ones, which then just run again).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as err:
            raise ValueError(f"checkpoint_dir={directory!r}: {path} is not a usable "
                             f"checkpoint index: {err}") from None
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        now = time.time()
        for name in os.listdir(self.objects):
            if not name.startswith(".tmp."):
                continue
            path = os.path.join(self.objects, name)
            if name.startswith(self._prefix):  # this host's: its writer is alive or not
                pid_text = name[len(self._prefix):].split(".", 1)[0]
                stale = pid_text.isdigit() and not paths.pid_alive(int(pid_text))
            else:  # another host's: no write takes a day
                try:
                    stale = now - os.stat(path).st_mtime > _FOREIGN_TEMP_AGE
                except OSError:
                    continue
            if stale:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # ---- read ----------------------------------------------------------------------------
    def get(self, key: str, resolve: Any = None) -> Entry | None:
        """The stored result of `key`, or None (also for a damaged entry, which is dropped)."""
        with self._lock:
            row = self._db.execute("SELECT data, file, size, stdout, stderr FROM results "
                                   "WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data, file, size, stdout, stderr = row
        try:
            if file:
                path = os.path.join(self.objects, file)
                if os.path.getsize(path) != size:
                    raise ValueError(f"{path} has {os.path.getsize(path)} bytes, expected "
                                     f"{size}")
                value = objectformat.read(path)
            else:
                value = serialization.loads(data)
        except Exception as err:  # noqa: BLE001 - a damaged entry is a miss, never a value
            _log.warning("checkpoint entry %s is unreadable (%s); running the task again",
                         key, err)
            self.drop(key)
            return None
        return Entry(value, stdout, stderr)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM results WHERE key = ?",
                                    (key,)).fetchone() is not None

    def count(self) -> int:
        """How many results the directory holds."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def drop(self, key: str) -> None:
        """Forget `key` (its file too)."""
        with self._lock:
            self._db.execute("DELETE FROM results WHERE key = ?", (key,))
        try:
            os.unlink(os.path.join(self.objects, f"{key}.obj"))
        except OSError:
            pass

    # ---- write ---------------------------------------------------------------------------
    def write(self, record: Record) -> bool:
        """Persist one result; False (logged) when it cannot be (e.g. it holds refs)."""
        return self.write_many([record]) == 1

    def write_many(self, records: list[Record]) -> int:
        """Persist results, small ones in one transaction (a commit per result measured
        ~100 us here, the memo thread's limit at the cluster's task rate); returns how many
        were written. Rows are committed before each large result's file is written, so
        a kill loses at most that one."""
        rows: list[tuple[Any, ...]] = []
        written = 0
        for record in records:
            try:
                enc = objectformat.encode(record.value)
            except Exception as err:  # noqa: BLE001 - the run goes on; only this one misses
                _log.warning("result of %s not checkpointed: it cannot be pickled (%s)",
                             record.app, err)
                continue
            if enc.refs:
                _log.warning("result of %s not checkpointed: it holds object refs, which do "
                             "not outlive the session (return the values instead)", record.app)
                continue
            inline = objectformat.inline_bytes(enc, record.value)
            file = None
            if inline is None:
                file = f"{record.key}.obj"
                try:
                    written += self._commit(rows)
                    rows = []
                    self._write_file(file, enc)
                except (OSError, sqlite3.Error) as err:  # (disk full, quota): only this one
                    _log.warning("result of %s not checkpointed: %s", record.app, err)
                    continue
            rows.append((record.key, record.app, inline, file,
                         enc.size if file else len(inline or b""), record.stdout,
                         record.stderr, time.time()))
        return written + self._commit(rows)

    def _commit(self, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (key, app, data, file, size, stdout, "
                    "stderr, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)

    def _write_file(self, name: str, enc: objectformat.Encoded) -> None:
        tmp = os.path.join(self.objects, f"{self._prefix}{os.getpid()}.{name}")
        stall = float(os.environ.get(_STALL_ENV, "0") or 0)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            parts = enc.parts()
            half = len(parts) // 2 if len(parts) > 1 else 1
            for i, part in enumerate(parts):
                if stall and i == half:
                    time.sleep(stall)
                view = memoryview(part).cast("B")
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.ftruncate(fd, enc.size)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        os.replace(tmp, os.path.join(self.objects, name))

    def close(self) -> None:
        """Close the index (committed rows are already on disk)."""
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
