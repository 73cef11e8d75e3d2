"""AppFuture: the handle an app call returns."""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from api import _errors

_load_lock = threading.Lock()
_log = logging.getLogger("api.futures")
#: Inside a worker with a nested client (api._nested): waits go through this, which gives
#: the task's CPUs back while it waits. Empty in drivers.
_block: list[Callable[[list[Any], int, float | None], None]] = []


def set_block_hook(hook: Callable[[list[Any], int, float | None], None]) -> None:
    """Make waits on futures call ``hook(futures, needed, timeout)`` first (api._nested)."""
    _block[:] = [hook]


def in_worker() -> bool:
    """True inside a worker whose apps call apps (waits give CPUs back)."""
    return bool(_block)


def block(futures: list[Any], needed: int, timeout: float | None) -> float | None:
    """Wait (CPUs given back) until `needed` of `futures` are done, inside a worker; a
    no-op in drivers. Returns the timeout left for the caller's own wait (0 once
    `timeout` has passed with too few done)."""
    if not _block:
        return timeout
    _block[0](futures, needed, timeout)
    if timeout is not None and sum(1 for f in futures if f.done()) < needed:
        return 0
    return timeout


def as_completed_in_worker(futures: list[Any], timeout: float | None) -> Any:
    """:func:`api.as_completed` inside a worker: each wait gives the task's CPUs back."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(futures)
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        block(pending, 1, left)
        done = [f for f in pending if f.done()]
        if not done:
            raise TimeoutError(f"{len(pending)} (of {len(futures)}) futures unfinished")
        pending = [f for f in pending if not f.done()]
        yield from done


def format_id(object_id: int) -> str:
    """How a task or object id is written everywhere users see one (the head's messages
    write ``{id:#x}`` too): the whole id in hex, e.g. ``0x10000000007``."""
    return f"{object_id:#x}"


def stale_message(what: str) -> str:
    """The error text for a future, ref or handle used after its session ended."""
    return (f"{what} belongs to an earlier session (ended by api.shutdown()): ids start "
            "again with every session, so it could name another object now; make it again "
            "in this session")


class Stored:
    """A finished future's value not loaded yet (it stays in a node store until asked)."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


class CallbackThread:
    """Runs futures' done-callbacks, in the order the futures finished, on one thread of
    its own: never on the thread that delivers results, so a callback may wait on another
    future. Started on first use; it ends when stopped with nothing left to run."""

    def __init__(self, name: str = "shoal-callbacks") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Any, list[Callable[[Any], Any]]] | None] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, future: Any, callbacks: list[Callable[[Any], Any]]) -> None:
        """Queue `callbacks` (each called with `future`)."""
        with self._lock:
            self._queue.put((future, callbacks))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name,
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Let the thread end once it has run what is queued."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            future, callbacks = item
            for callback in callbacks:
                try:
                    callback(future)
                except Exception:
                    _log.exception("exception calling callback for %r", future)


class FutureLock:
    """The ``_condition`` of an :class:`AppFuture`: what ``concurrent.futures`` uses of a
    ``threading.Condition`` (``with``, ``acquire``/``release``, ``wait``, ``notify_all``)
    in 2 objects the garbage collector tracks instead of 9 (a Condition binds 5 lock
    methods and holds a deque). A driver's burst holds every future it made: with a
    Condition each, the collector's full passes over them cost about half of a
    submission's CPU (20 -> 10 us per no-op submit with those passes off, measured)."""

    __slots__ = ("_lock", "_waiters", "wake")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._waiters: list[Any] | None = None
        #: Called once the future is done, while a thread reads the connection waiting
        #: for it (Client.wait_inline): it may have been done by another thread.
        self.wake: Callable[[], None] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (``concurrent.futures.wait`` takes every future's at once)."""
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        """Give the lock back."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """As ``threading.Condition.wait`` (the lock must be held; it is released while
        waiting, at every recursion level, and taken back)."""
        lock = self._lock
        if not lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _allocate_lock()
        waiter.acquire()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        saved = lock._release_save()  # type: ignore[attr-defined]
        got = False
        try:
            if timeout is None:
                waiter.acquire()
                got = True
            elif timeout > 0:
                got = waiter.acquire(True, timeout)
            else:
                got = waiter.acquire(False)
            return got
        finally:
            lock._acquire_restore(saved)  # type: ignore[attr-defined]
            if not got and self._waiters is not None:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def notify(self, n: int = 1) -> None:
        """Wake up to `n` threads waiting (the lock must be held)."""
        waiters = self._waiters
        if not waiters:
            return
        for waiter in waiters[:n]:
            waiter.release()
        del waiters[:n]

    def notify_all(self) -> None:
        """Wake every thread waiting (the lock must be held)."""
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter.release()
        if self.wake is not None:
            self.wake()


_allocate_lock = threading.Lock
#: What ``concurrent.futures.Future.__init__`` sets; AppFuture sets the same itself (with
#: a FutureLock), or calls it when another Python version sets something else.
_FUTURE_FIELDS = sorted(vars(concurrent.futures.Future()))
_LIGHT = _FUTURE_FIELDS == sorted(["_condition", "_state", "_result", "_exception",
                                   "_waiters", "_done_callbacks"])


class AppFuture(concurrent.futures.Future):
    """The result of an app call, available later.

    A :class:`concurrent.futures.Future`: ``.result(timeout)``, ``.exception()``,
    ``.done()``, ``.add_done_callback()`` all work, and so does
    ``concurrent.futures.wait``/``as_completed``. Pass it to another app as an argument
    (also inside lists, tuples and dicts) to make that app depend on it; its value then
    travels between workers without passing through the driver. Done-callbacks run on a
    callback thread of the driver's (one, in the order futures finish), so a callback may
    wait on other futures.

    >>> fut = double(21)          # doctest: +SKIP
    >>> fut.result()              # doctest: +SKIP
    42
    """

    _shoal_ref = True
    #: One :class:`api.DataFuture` per ``outputs=[api.File(...)]`` entry of the call
    #: (empty when the call had none).
    outputs: Any = ()
    _from_store = False  # (set once a stored value has been loaded)
    #: The app's retry_handler state (api._retry.RetryState), if it has one.
    retry: Any = None
    # (A class default, so __del__ of a future whose __init__ never ran to this point
    # releases nothing instead of printing an AttributeError: seen at a driver's exit.)
    _client: Any = None

    def __init__(self, task_id: int, name: str, client: Any,
                 stdout: str | None = None, stderr: str | None = None) -> None:
        if _LIGHT:
            self._condition = FutureLock()  # type: ignore[assignment]
            self._state = "PENDING"
            self._result = None
            self._exception = None
            self._waiters = []
            self._done_callbacks: list[Callable[[Any], Any]] = []
        else:
            super().__init__()
        self._id = task_id
        self._client = client
        self._hooks: list[Callable[[AppFuture], None]] | None = None
        self.name = name
        #: Path of a bash app's stdout file (None when not redirected).
        self.stdout = stdout
        #: Path of a bash app's stderr file (None when not redirected).
        self.stderr = stderr

    @property
    def task_id(self) -> int:
        """The cluster-wide id of the task (also the id of its result object); messages
        write it as ``hex(task_id)``, as this future's repr does."""
        return self._id

    def result(self, timeout: float | None = None) -> Any:
        """The app's value (waits up to `timeout` seconds); raises what the app raised.

        A large value is fetched from the node store holding it on the first call (mapped
        without a copy when that node is this host). A value that cannot be loaded here
        raises :class:`SerializationError` (the same one :meth:`exception` returns)."""
        if not self.done():
            timeout = self._wait(timeout)
        try:
            value = super().result(timeout)
        except concurrent.futures.CancelledError as err:
            if isinstance(err, _errors.TaskCancelledError):
                raise
            raise self._cancelled_error() from None
        if type(value) is Stored:
            value = self._load()
        return value

    def _wait(self, timeout: float | None) -> float | None:
        """Before the plain wait: inside a worker, give its CPUs back; in a driver, read
        the result off the connection on this thread (see Client.wait_inline). Returns
        the timeout left."""
        if _block:
            return block([self], 1, timeout)
        client = self._client
        return timeout if client is None else client.wait_inline(self, timeout)

    @property
    def stored(self) -> bool:
        """True when finished with a value still in a node store (not loaded here yet)."""
        return type(self._result) is Stored

    @property
    def large(self) -> bool:
        """True when finished with a value too large for a message: one that is, or was
        before it was loaded here, in a node store."""
        return self._from_store or type(self._result) is Stored

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What :meth:`result` would raise (None when it returns a value). A stored
        value is loaded (as :meth:`result` would) to tell."""
        if not self.done():
            timeout = self._wait(timeout)
        try:
            err = super().exception(timeout)
        except concurrent.futures.CancelledError as cancelled:
            if isinstance(cancelled, _errors.TaskCancelledError):
                raise
            raise self._cancelled_error() from None
        if err is None and type(self._result) is Stored:
            try:
                self._load()
            except Exception as failure:  # noqa: BLE001 - returned, as result() raises it
                return failure
        return err

    def cancel(self) -> bool:
        """Cancel the task if it has not started (standard ``Future.cancel`` semantics):
        True if it will not run, False if it is running or done. Wherever it waits (this
        driver's send buffer, the head's queue, a node's backlog) it is taken out; its
        dependents fail with :class:`DependencyError`, and :meth:`result` raises
        :class:`TaskCancelledError`. ``api.cancel(fut, force=True)`` also stops a running
        task.

        >>> fut = slow(60)            # doctest: +SKIP
        >>> fut.cancel()              # doctest: +SKIP
        True
        """
        client = self._client
        if client is None or self.done():
            return super().cancel() if client is None else self.cancelled()
        return bool(client.cancel([self], False)[0])

    def mark_cancelled(self) -> bool:
        """End this future as cancelled (the driver's client calls it once the task will
        not run): waiters and callbacks see it done. False if it was done already."""
        with self._condition:  # (Future.cancel, then set_running_or_notify_cancel, at once)
            if self._state != "PENDING":
                return self.cancelled()
            self._state = "CANCELLED_AND_NOTIFIED"
            for waiter in self._waiters:  # concurrent.futures.wait/as_completed
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # (outside the lock: hooks may take others)
        return True

    def _cancelled_error(self) -> _errors.TaskCancelledError:
        return _errors.TaskCancelledError(
            f"app {self.name!r} (task {format_id(self._id)}) was cancelled")

    def _load(self) -> Any:
        with _load_lock:
            stored = self._result
            if self._exception is not None:
                raise self._exception
            if type(stored) is not Stored:
                return stored
            client = self._client
            if client.closed:
                raise _errors.ShoalError(stale_message(f"the value of {self!r}"))
            try:
                self._result = client.load(stored.result)
                self._from_store = True
            except _errors.ShoalError:
                raise  # lost, or not connected: may go differently next time
            except Exception as err:
                failure = _errors.SerializationError(
                    f"the result of {self.name} (task {format_id(self._id)}) could not be "
                    f"loaded in the driver: {err!r}")
                failure.__cause__ = err
                with self._condition:
                    self._exception = failure  # result() raises it from now on
                raise failure from err
            return self._result

    def when_done(self, hook: Callable[[AppFuture], None]) -> None:
        """Call `hook(self)` once done, on the thread that completes the future (or now
        when it is done). For the driver's own quick bookkeeping: a hook must not block."""
        with self._condition:
            if not self.done():
                if self._hooks is None:
                    self._hooks = []
                self._hooks.append(hook)
                return
        hook(self)

    def _invoke_callbacks(self) -> None:
        # Called by set_result/set_exception on the delivering thread: hooks run here,
        # user callbacks on the client's callback thread.
        hooks = self._hooks
        if hooks:
            self._hooks = None
            for hook in hooks:
                try:
                    hook(self)
                except Exception:
                    _log.exception("exception in a completion hook of %r", self)
        callbacks: list[Callable[[Any], Any]] = self._done_callbacks
        if callbacks:
            self._done_callbacks = []
            self._client.callbacks.run(self, callbacks)

    def __repr__(self) -> str:
        state = self._state.lower()
        return f"<AppFuture {self.name} task={format_id(self._id)} {state}>"

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            try:
                client.release(self._id)
                if type(self._result) is Stored:  # never loaded: its nested refs too
                    for inner in self._result.result.nested:
                        client.release(inner)
            except Exception:
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("an AppFuture can only be passed as an argument to apps")
