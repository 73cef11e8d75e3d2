"""The public API, pinned: a name added to or dropped from ``api.__all__`` is a decision, so
it has to be made here too. Every public name is documented."""

from __future__ import annotations

import api

PUBLIC = [
    "AUTO_LOGNAME",
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "App",
    "AppFuture",
    "AppTimeout",
    "BashExitFailure",
    "CacheKeyError",
    "ClusterInfo",
    "ConnectionError",
    "DataFuture",
    "DependencyError",
    "Executor",
    "File",
    "ObjectLostError",
    "ObjectRef",
    "ObjectStoreFullError",
    "ResourceUnavailableError",
    "SerializationError",
    "ShoalError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
    "actor",
    "as_completed",
    "bash_app",
    "cancel",
    "checkpoint",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "join_app",
    "kill",
    "progress",
    "put",
    "python_app",
    "shutdown",
    "wait",
]


def test_all_is_pinned():
    assert PUBLIC == sorted(PUBLIC)
    assert len(set(api.__all__)) == len(api.__all__), "a name is listed twice in api.__all__"
    assert sorted(api.__all__) == PUBLIC


def test_every_public_name_exists():
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing, f"api.__all__ names what api does not define: {missing}"


def _own_doc(obj: object) -> str | None:
    """The docstring written for `obj`: a class's or function's own (never one inherited from
    a base class); for a constant, the docstring of its project-defined type."""
    if isinstance(obj, type) or callable(obj):
        return obj.__doc__
    kind = type(obj)
    if kind.__module__.split(".")[0] in ("api", "cluster"):
        return kind.__doc__
    return None


def test_every_public_name_has_a_docstring():
    undocumented = [name for name in api.__all__
                    if not (_own_doc(getattr(api, name, None)) or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"
