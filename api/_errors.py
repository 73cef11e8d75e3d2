"""The exceptions a shoal user sees: defined in :mod:`cluster.common.errors` (so code
inside workers raises the same types) and re-exported here for the api package."""

from __future__ import annotations

from cluster.common.errors import (
    ActorDiedError,
    AppTimeout,
    BashExitFailure,
    ConnectionError,
    DependencyError,
    ObjectLostError,
    ObjectStoreFullError,
    ResourceUnavailableError,
    SerializationError,
    ShoalError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
    error_for,
    make_task_error,
)

__all__ = [
    "ActorDiedError",
    "AppTimeout",
    "BashExitFailure",
    "ConnectionError",
    "DependencyError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "ResourceUnavailableError",
    "SerializationError",
    "ShoalError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
    "error_for",
    "make_task_error",
]
