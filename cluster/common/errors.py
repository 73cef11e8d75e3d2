"""The exceptions a shoal user sees, and the one mapping from a failed result's status to
the exception it stands for.

Shared by drivers (re-exported as ``api.TaskError`` etc.) and by code running inside
workers (an app calling an actor), so both raise the same types. Imports nothing heavy:
workers load it (no gRPC, no protobuf).
"""

from __future__ import annotations

import builtins
import concurrent.futures
import json
from typing import Any, cast

from cluster.common import serialization, status


class ShoalError(Exception):
    """Base class of every error shoal raises."""


class TaskError(ShoalError):
    """An app raised. ``.cause`` is the original exception (when it could be shipped back),
    ``.exc_type`` its type name, ``.remote_traceback`` the traceback text from the worker.

    The exception raised in the driver is also an instance of the original type when that
    type allows it, so ``except ValueError`` catches an app's ``ValueError``.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, exc_type: str = "",
                 remote_traceback: str = "", task_id: int = 0, task_name: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.task_name = task_name

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_error, (self.args[0] if self.args else "", self.exc_type,
                                      self.remote_traceback, self.task_id, self.task_name))


def _rebuild_task_error(message: str, exc_type: str, tb: str, task_id: int,
                        task_name: str) -> TaskError:
    return TaskError(message, exc_type=exc_type, remote_traceback=tb, task_id=task_id,
                     task_name=task_name)


#: The TaskError subclass made for each original exception type (see make_task_error).
_DUAL_TYPES: dict[type, type[TaskError]] = {}


def make_task_error(cause: BaseException | None, module: str, name: str, message: str,
                    traceback_text: str, task_id: int, task_name: str) -> TaskError:
    """A TaskError that is also an instance of the app's exception type where possible."""
    qualified = name if module in ("builtins", "") else f"{module}.{name}"
    text = f"app {task_name!r} raised {qualified}: {message}"
    kwargs: dict[str, Any] = dict(cause=cause, exc_type=qualified,
                                  remote_traceback=traceback_text, task_id=task_id,
                                  task_name=task_name)
    kind = type(cause) if cause is not None else None
    if kind is not None and issubclass(kind, Exception) and not issubclass(kind, TaskError):
        dual = _DUAL_TYPES.get(kind)
        if dual is None:
            try:
                # A class built at run time: its TaskError base is what mypy cannot see.
                dual = cast(type[TaskError], type(f"TaskError[{kind.__name__}]", (
                    TaskError, kind), {
                    "__init__": TaskError.__init__, "__str__": TaskError.__str__,
                    "__reduce__": TaskError.__reduce__}))
            except TypeError:
                dual = TaskError
            _DUAL_TYPES[kind] = dual
        try:
            err = dual.__new__(dual)
            TaskError.__init__(err, text, **kwargs)
            return err
        except Exception:
            pass
    return TaskError(text, **kwargs)


class DependencyError(ShoalError):
    """A task's dependency failed, so the task never ran. ``.dependency`` names it."""

    def __init__(self, message: str, task_name: str = "", dependency: str = "") -> None:
        super().__init__(message)
        self.task_name = task_name
        self.dependency = dependency


class BashExitFailure(ShoalError):
    """A bash app's command exited with a non-zero code (``.exitcode``).

    ``.stderr_tail`` holds the last lines the command wrote to stderr ("" if none) and
    ``.logs`` the paths of the files its output went to (its stdout/stderr targets, or
    the task's log file); the message shows both, so the reason is visible at once.
    """

    def __init__(self, app_name: str, exitcode: int, stderr_tail: str = "",
                 logs: tuple[str, ...] | list[str] = ()) -> None:
        text = f"bash app {app_name!r} failed with exit code {exitcode}"
        if logs:
            text += f" (logs: {', '.join(logs)})"
        if stderr_tail:
            text += "; last lines of its stderr:\n" + stderr_tail.rstrip("\n")
        super().__init__(text)
        self.app_name = app_name
        self.exitcode = exitcode
        self.stderr_tail = stderr_tail
        self.logs = tuple(logs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (BashExitFailure, (self.app_name, self.exitcode, self.stderr_tail, self.logs))


def bash_exit_payload(exitcode: int, stderr_tail: str, logs: list[str]) -> bytes:
    """The data of a BASH_EXIT result (read back by :func:`error_for`)."""
    return json.dumps({"exitcode": exitcode, "stderr_tail": stderr_tail,
                       "logs": logs}).encode()


def _bash_exit(name: str, data: bytes) -> BashExitFailure:
    try:
        payload = json.loads(data.decode() or "1")
    except ValueError:
        payload = 1
    if isinstance(payload, int):  # the exit code as text (workers before the tail)
        return BashExitFailure(name, payload)
    if not isinstance(payload, dict):
        return BashExitFailure(name, 1)
    return BashExitFailure(name, int(payload.get("exitcode", 1)),
                           str(payload.get("stderr_tail", "")),
                           [str(p) for p in payload.get("logs", [])])


class AppTimeout(ShoalError):
    """An app ran past its ``walltime`` and was killed."""


class WorkerCrashedError(ShoalError):
    """The worker process or node running the task died (after any retries)."""


class ActorDiedError(ShoalError):
    """The actor is dead (killed, its driver left, or out of restarts): the call did not
    run, or did not finish."""


class ObjectLostError(ShoalError):
    """An object is no longer held by the cluster (released, or its holder died)."""


class ObjectStoreFullError(ShoalError, MemoryError):
    """A node's object store cannot take an object (over its limit with nothing left to
    spill, or shared memory full); the message says how much was asked and what to do."""


class ResourceUnavailableError(ShoalError, ValueError):
    """No node of the cluster can ever satisfy a task's resource request."""


class TaskCancelledError(ShoalError, concurrent.futures.CancelledError):
    """The task was cancelled (``fut.cancel()``/``api.cancel``, the cluster shut down, or
    the driver disconnected); also a :class:`concurrent.futures.CancelledError`."""


class SerializationError(ShoalError, TypeError):
    """An argument or value cannot be pickled; the message names it."""


class ConnectionError(ShoalError, builtins.ConnectionError):  # noqa: A001
    """The cluster could not be reached or refused us; the message says what was tried."""


def error_for(code: int, data: bytes, message: str, name: str,
              task_id: int = 0) -> BaseException:
    """The exception a failed result stands for: `code` is its Status, `data` and
    `message` its payload and text, `name` the app's (or actor method's) name."""
    if code == status.APP_ERROR:
        cause, module, kind, text, tb = serialization.loads_error(data)
        return make_task_error(cause, module, kind, text, tb, task_id, name)
    if code == status.BASH_EXIT:
        return _bash_exit(name, data)
    if code == status.OBJECT_STORE_FULL:
        return ObjectStoreFullError(f"app {name!r}: {message}")
    if code == status.TIMEOUT:
        return AppTimeout(f"app {name!r}: {message}")
    if code in (status.WORKER_CRASHED, status.NODE_LOST):
        return WorkerCrashedError(f"app {name!r}: {message}")
    if code == status.DEPENDENCY_FAILED:
        return DependencyError(f"app {name!r} did not run: {message}", name)
    if code == status.UNSCHEDULABLE:
        return ResourceUnavailableError(f"app {name!r}: {message}")
    if code == status.OBJECT_LOST:
        return ObjectLostError(message)
    if code == status.ACTOR_DIED:
        return ActorDiedError(f"{name}: {message}")
    return TaskCancelledError(f"app {name!r} was cancelled: {message}")
