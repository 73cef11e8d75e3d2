"""AppFuture: the handle an app call returns."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

_load_lock = threading.Lock()


class Stored:
    """A finished future's value not loaded yet (it stays in a node store until asked)."""

    __slots__ = ("result",)

    def __init__(self, result: Any) -> None:
        self.result = result


class AppFuture(concurrent.futures.Future):
    """The result of an app call, available later.

    A :class:`concurrent.futures.Future`: ``.result(timeout)``, ``.exception()``,
    ``.done()``, ``.add_done_callback()`` all work, and so does
    ``concurrent.futures.wait``/``as_completed``. Pass it to another app as an argument
    (also inside lists, tuples and dicts) to make that app depend on it; its value then
    travels between workers without passing through the driver.

    >>> fut = double(21)          # doctest: +SKIP
    >>> fut.result()              # doctest: +SKIP
    42
    """

    _shoal_ref = True

    def __init__(self, task_id: int, name: str, client: Any,
                 stdout: str | None = None, stderr: str | None = None) -> None:
        super().__init__()
        self._id = task_id
        self._client = client
        self.name = name
        #: Path of a bash app's stdout file (None when not redirected).
        self.stdout = stdout
        #: Path of a bash app's stderr file (None when not redirected).
        self.stderr = stderr

    @property
    def task_id(self) -> int:
        """The cluster-wide id of the task (also the id of its result object)."""
        return self._id

    def result(self, timeout: float | None = None) -> Any:
        """The app's value (waits up to `timeout` seconds); raises what the app raised.

        A large value is fetched from the node store holding it on the first call (mapped
        without a copy when that node is this host)."""
        value = super().result(timeout)
        if type(value) is Stored:
            with _load_lock:
                if type(self._result) is Stored:
                    self._result = self._client.load(self._result.result)
                value = self._result
        return value

    def __repr__(self) -> str:
        state = self._state.lower()
        return f"<AppFuture {self.name} task={self._id & 0xFFFFFFFFFF} {state}>"

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
