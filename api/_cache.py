"""The memo table of a session: ``cache=True`` calls looked up, shared and checkpointed.

Keys come from :mod:`api._memo`; the checkpoint directory is :mod:`api._checkpoint`.

**In one driver** identical calls share a result: a call identical to one still running
returns that call's future (as Dask's identical keys do); once it succeeded, the table
keeps the value (not the future, so the head may forget the task) and identical calls get
a future that is done at once. A large result (kept in a node store) is remembered only
while a future for it is alive, so the table never pins object-store memory the user let
go of. A failed call is not remembered (the next identical call runs).

A call whose arguments hold unfinished futures gets a future at once (tracked by the
client as one the driver resolves itself, see ``Client.track_local``); its key is made
once they are done, on the memo thread, and then it is a shared future, a checkpointed
value, or a task submitted under that future's id. Work that may be slow (hashing large
values, loading a shared result, writing checkpoints) runs on that one thread, never on
the thread delivering results.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from api import _session
from api._checkpoint import CheckpointStore, Record
from api._files import output_futures
from api._futures import AppFuture
from api._memo import DependencyFailed, call_key
from cluster.common.serialization import ObjectRef

_log = logging.getLogger("api.cache")

MODES = ("task_exit", "periodic", "manual")


class Memoizer:
    """A session's memo table, its checkpoint store, and a thread for slow work (hashing
    resolved futures' values, writing results) off the result reader."""

    def __init__(self, client: Any, store: CheckpointStore | None, mode: str,
                 period: float) -> None:
        self.client = client
        self.store = store
        self.mode = mode
        self.period = period
        # key -> its future while it runs; once it succeeded, its value (a small one) or a
        # weak reference to it (a large, stored one). Neither keeps the task's id alive:
        # the head can forget the task, and the table never pins object-store memory the
        # user has let go of (the checkpoint, if any, still has it).
        self._table: dict[str, AppFuture | weakref.ref[AppFuture] | Record] = {}
        # _lock: the table and lookups (user threads, the memo thread; held while a miss
        # is submitted). _idle: the job count and unwritten results; the reader thread
        # takes only this one, never held across anything that blocks.
        self._lock = threading.RLock()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._unwritten: list[Record] = []  # finished, not written yet (periodic, manual)
        self._to_write: list[Record] = []   # task_exit: finished, a flush job queued
        self._flush_queued = False
        self._queued = 0                     # jobs not finished yet
        self._idle = threading.Condition(threading.Lock())
        self.written = 0
        self._closed = False
        if store is not None and mode == "periodic":
            self._start()

    # ---- calls -------------------------------------------------------------------------
    def call(self, app: Any, args: tuple, kwargs: dict) -> AppFuture:
        """A memoized app call: a shared future, a checkpointed value, or a new task."""
        pending: list[Any] = []
        try:
            key = call_key(app, args, kwargs, pending, self._ref_value)
        except DependencyFailed:
            return app.submit(args, kwargs)  # fails as any dependent does; not remembered
        if pending:
            return self._deferred(app, args, kwargs, pending)
        return self._lookup_or_run(app, key, args, kwargs, None)

    def _ref_value(self, ref: ObjectRef) -> Any:
        _session.check_ref(ref)
        client = self.client
        known = client.put_locations.get(ref.id)
        if known is not None:
            return client.load(known)
        (result,) = client.get_values([ref.id], None)
        if result.status != 0:
            raise client.error_for(result, f"object {ref!r}")
        return client.load(result)

    def _lookup_or_run(self, app: Any, key: str, args: tuple, kwargs: dict,
                       outer: AppFuture | None) -> AppFuture:
        with self._lock:
            shared = self._table.get(key)
            if isinstance(shared, Record):
                return self._hit(app, key, kwargs, shared, outer)
            if isinstance(shared, weakref.ref):
                shared = shared()
            if shared is not None and shared.done() and \
                    concurrent.futures.Future.exception(shared, 0) is not None:
                shared = None  # failed: not remembered (its _forget may not have run yet)
            if shared is not None:
                if outer is None:
                    return shared
                self._chain(shared, outer)
                return outer
            entry = self.store.get(key) if self.store is not None else None
            if entry is not None:
                record = Record(key, app.name, entry.value, entry.stdout, entry.stderr)
                self._table[key] = record
                return self._hit(app, key, kwargs, record, outer)
            fut = app.submit(args, kwargs, outer)
            self._table[key] = fut
        fut.when_done(lambda done: self._finished(key, app.name, done))
        return fut

    def _hit(self, app: Any, key: str, kwargs: dict, record: Record,
             outer: AppFuture | None) -> AppFuture:
        """A future holding a known value (the driver resolves it; the head is told the
        value only if a task depends on it)."""
        fut = outer
        if fut is None:
            fut = AppFuture(self.client.new_id(), app.name, self.client, record.stdout,
                            record.stderr)
            self._with_outputs(fut, kwargs)
            self.client.track_local(fut)
        else:
            fut.stdout, fut.stderr = record.stdout, record.stderr
        fut.set_result(record.value)
        return fut

    def _with_outputs(self, fut: AppFuture, kwargs: dict) -> None:
        outputs = kwargs.get("outputs")
        if outputs:
            fut.outputs = output_futures(fut, outputs)

    def _deferred(self, app: Any, args: tuple, kwargs: dict, pending: list[Any]) -> AppFuture:
        """A future now; the key (and the lookup) once the futures among the arguments
        are done."""
        client = self.client
        task_id = client.new_id()
        outer = AppFuture(task_id, app.name, client, *app.stream_paths(kwargs, task_id))
        self._with_outputs(outer, kwargs)
        client.track_local(outer)
        left = [len(pending)]
        lock = threading.Lock()

        def one_done(_fut: Any) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._run_job(lambda: self._resolve(app, args, kwargs, outer))

        for fut in pending:
            fut.when_done(one_done)
        return outer

    def _resolve(self, app: Any, args: tuple, kwargs: dict, outer: AppFuture) -> None:
        try:
            try:
                pending: list[Any] = []
                key = call_key(app, args, kwargs, pending, self._ref_value)
                if pending:  # (cannot happen: all were done)
                    raise RuntimeError("a dependency is not done")
            except DependencyFailed:
                app.submit(args, kwargs, outer)  # it fails as any dependent does
                return
            self._lookup_or_run(app, key, args, kwargs, outer)
        except Exception as err:  # noqa: BLE001 - the call's future fails with it
            if not outer.done():
                outer.set_exception(err)

    def _chain(self, source: AppFuture, target: AppFuture) -> None:
        """Resolve `target` as `source` resolves (its value loaded off the reader)."""
        def copy() -> None:
            err = concurrent.futures.Future.exception(source, 0)
            if err is None:
                try:
                    value = source.result()
                except Exception as failure:  # noqa: BLE001
                    err = failure
            if target.done():
                return
            target.stdout, target.stderr = source.stdout, source.stderr
            if err is not None:
                target.set_exception(err)
            else:
                target.set_result(value)

        source.when_done(lambda _s: self._run_job(copy))

    def _finished(self, key: str, name: str, fut: AppFuture) -> None:
        """On the reader thread: remember success, forget failure, checkpoint."""
        if concurrent.futures.Future.exception(fut, 0) is not None:
            self._run_job(lambda: self._forget(key, fut))
            return
        self._run_job(lambda: self._settle(key, name, fut))
        if self.store is None or self._closed:
            return
        with self._idle:
            if self.mode != "task_exit":
                self._unwritten.append(Record(key, name, fut, fut.stdout, fut.stderr))
                return
            self._to_write.append(Record(key, name, fut, fut.stdout, fut.stderr))
            if self._flush_queued:
                return  # (the queued flush takes this one too)
            self._flush_queued = True
        self._run_job(self._flush)

    def _flush(self) -> None:
        """task_exit: write what finished since the last flush (in one go)."""
        with self._idle:
            records, self._to_write = self._to_write, []
            self._flush_queued = False
        self._write(records)

    def _settle(self, key: str, name: str, fut: AppFuture) -> None:
        """A call succeeded: keep its value, not its future (a weak reference to the
        future for a large value still in a node store)."""
        with self._lock:
            if self._table.get(key) is not fut:
                return
            if fut.large:
                self._table[key] = weakref.ref(fut)
            else:
                self._table[key] = Record(key, name, fut.result(), fut.stdout, fut.stderr)

    def _forget(self, key: str, fut: AppFuture) -> None:
        with self._lock:
            if self._table.get(key) is fut:
                del self._table[key]

    # ---- checkpoints -------------------------------------------------------------------
    def _write(self, records: list[Record]) -> None:
        """Write finished calls (each record's value is its future)."""
        store = self.store
        if store is None or not records:
            return  # (the session ended)
        ready = []
        for record in records:
            try:
                value = record.value.result()
            except Exception:  # noqa: BLE001 - e.g. lost: nothing to write
                continue
            ready.append(Record(record.key, record.app, value, record.stdout, record.stderr))
        count = store.write_many(ready)
        with self._idle:
            self.written += count

    def checkpoint(self) -> int:
        """Write every finished, unwritten result now; wait for writes in flight. Returns
        how many results this driver has written in all."""
        with self._idle:
            records, self._unwritten = self._unwritten, []
        if records:
            self._run_job(lambda: self._write(records))
        self.drain()
        return self.written

    def drain(self) -> None:
        """Wait until the queued jobs have run."""
        with self._idle:
            while self._queued:
                self._idle.wait(0.5)

    def _run_job(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._queued += 1
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        # (Called holding _idle, or from __init__.)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="shoal-memo", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        next_periodic = time.monotonic() + self.period
        while True:
            timeout = None
            if self.mode == "periodic" and self.store is not None:
                timeout = max(0.0, next_periodic - time.monotonic())
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                next_periodic = time.monotonic() + self.period
                with self._idle:
                    records, self._unwritten = self._unwritten, []
                self._write(records)
                continue
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001
                _log.exception("memoization job failed")
            finally:
                job = None  # (it may hold a future: not until the next job comes)
                with self._idle:
                    self._queued -= 1
                    self._idle.notify_all()

    def close(self, final_checkpoint: bool) -> None:
        """At the end of the session: the last checkpoint (unless manual), then stop."""
        if self._closed:
            return
        try:
            if final_checkpoint and self.store is not None and self.mode != "manual":
                self.checkpoint()
            else:
                self.drain()
        finally:
            self._closed = True  # results arriving from now on are not written
            self.drain()
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join(10)
            if self.store is not None:
                self.store.close()
                self.store = None
            self._table.clear()


# ---- the session's memoizer -------------------------------------------------------------
_memoizers: weakref.WeakKeyDictionary[Any, Memoizer] = weakref.WeakKeyDictionary()


def check_options(checkpoint_dir: Any, mode: Any, period: Any) -> None:
    """ValueError naming a bad checkpoint option of ``api.init``."""
    if checkpoint_dir is not None and not (isinstance(checkpoint_dir, str | os.PathLike)
                                           and os.fspath(checkpoint_dir)):
        raise ValueError(f"api.init(checkpoint_dir={checkpoint_dir!r}): expected a directory "
                         "path, or None")
    if mode not in MODES:
        raise ValueError(f"api.init(checkpoint_mode={mode!r}): expected one of "
                         f"{', '.join(repr(m) for m in MODES)}")
    if isinstance(period, bool) or not isinstance(period, int | float) or not period > 0:
        raise ValueError(f"api.init(checkpoint_period={period!r}): expected a number of "
                         "seconds > 0")


def open_store(checkpoint_dir: Any) -> CheckpointStore | None:
    """The checkpoint store of ``api.init(checkpoint_dir=)`` (None: memoize in memory
    only); ``$SHOAL_CHECKPOINT_DIR``, which ``clusterctl run --checkpoint-dir`` sets, is the
    default. ValueError naming the directory when it cannot be used."""
    if checkpoint_dir is None:
        checkpoint_dir = os.environ.get("SHOAL_CHECKPOINT_DIR") or None
    return CheckpointStore(os.fspath(checkpoint_dir)) if checkpoint_dir else None


def configure(client: Any, store: CheckpointStore | None, mode: str, period: float) -> None:
    """Set up memoization for a new session, with the store from :func:`open_store`."""
    _memoizers[client] = Memoizer(client, store, mode, float(period))
    _session.on_end(_end)


def _end(client: Any) -> None:
    memo = _memoizers.pop(client, None)
    if memo is not None:
        memo.close(final_checkpoint=not client.closed)


def memoizer() -> Memoizer:
    """The current session's memoizer (made, in memory only, if api.init made none)."""
    client = _session.client()
    memo = _memoizers.get(client)
    if memo is None:
        memo = _memoizers.setdefault(client, Memoizer(client, None, "task_exit", 60.0))
    return memo


def call(app: Any, args: tuple, kwargs: dict) -> AppFuture:
    """Run a ``cache=True`` app call through the session's memo table."""
    return memoizer().call(app, args, kwargs)


def checkpoint() -> int:
    """``api.checkpoint()``: see its docstring."""
    return memoizer().checkpoint()
