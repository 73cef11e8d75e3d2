"""The frames a daemon and its workers exchange, and an actor's direct callers: one named
type per frame, defined once for both sides.

Each message is a :class:`typing.NamedTuple` with a ``TAG``. On the wire it travels as the
plain tuple ``(TAG, *fields)`` (:func:`pack`) and is rebuilt into its type on arrival
(:func:`unpack`). Why not pickle the NamedTuple itself: pickle stores it by class
reference and rebuilds it through a Python-level ``__new__``, which measured about 1.1 us
more to dump and 1.0 us more to load per frame than a plain tuple (a no-op task takes two
frames, each dumped once and loaded once: ~4 us per task, this being the hottest path).
Tagging costs ~0.05 us to dump and ~0.3 us to load. The tags are the strings the frames
always carried, so the bytes on the wire are unchanged.

Receivers dispatch on the type (``type(message) is Run`` or a dict keyed by type), never
on positions. This module imports nothing beyond the standard library's typing: workers
import it and must start fast (no gRPC, no protobuf).

Payloads nested inside fields stay plain data: a result's ``data`` is the pickled value,
``("inline", bytes, refs)`` or ``("stored", path, size, refs)``; a dependency value is its
bytes, ``("path", store file)`` or ``("missing", why)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

#: Every message type, by its wire tag (filled by :func:`_tag`).
TYPES: dict[str, type[Any]] = {}

_M = TypeVar("_M", bound=type)


def _tag(tag: str) -> Callable[[_M], _M]:
    """Class decorator: give a message type its wire tag (``cls.TAG``, a plain class
    attribute) and enter it in :data:`TYPES`.

    Why not ``TAG = "fn"`` in the class body: mypy reads every assignment in a NamedTuple
    body as a field, so it took ``TAG`` for a required last field and reported every
    constructor call as missing an argument (at run time it is a class attribute either
    way; the decorator runs once, at import)."""
    def tagged(cls: _M) -> _M:
        assert tag not in TYPES, f"two message types share the tag {tag!r}"
        # setattr: the attribute is what this adds, so no static type knows it yet.
        setattr(cls, "TAG", tag)  # noqa: B010
        TYPES[tag] = cls
        return cls
    return tagged


# ---- daemon -> worker -------------------------------------------------------------------


@_tag("fn")
class Fn(NamedTuple):
    """A function (or actor class) the worker caches by id, sent before its first use."""

    fn_id: bytes
    blob: bytes


@_tag("run")
class Run(NamedTuple):
    """Run one task; the worker answers with :class:`Done`."""

    task_id: int
    fn_id: bytes
    kind: int                        # the proto's Kind (PYTHON or BASH)
    name: str
    args: bytes | int                # pickled (args, kwargs), or the id of a stored dep
    deps: dict[int, Any]
    gpus: str | None                 # CUDA_VISIBLE_DEVICES for the task, if it has GPUs
    stdout: tuple[str, str] | None   # (path, mode) for bash apps' output
    stderr: tuple[str, str] | None
    cwd: str
    env: dict[str, str] | None


@_tag("run_after")
class RunAfter(NamedTuple):
    """Run a task (a :class:`Run`'s fields) right after the task `after` this worker runs
    now, with that one's value as its argument `after`, if it ends as
    :func:`cluster.policy.staging.worker_runs` says; else drop it. The daemon reads the
    same :class:`Done` and knows which (it sent the task ahead: cluster.node.staged).

    With `after` 0 the task is *prefetched* (cluster.node.prefetch): it runs once the
    worker's current task ends, whatever its outcome, unless the worker hands it back
    (:class:`HandBack`) because that task waits."""

    after: int
    run: tuple


@_tag("actor_create")
class ActorCreate(NamedTuple):
    """Instantiate an actor: this worker then serves only its calls. Answered by
    :class:`Created`."""

    actor_id: int
    fn_id: bytes
    name: str
    args: bytes
    deps: dict[int, Any]
    gpus: str | None
    cwd: str
    env: dict[str, str] | None
    max_concurrency: int
    secret: bytes                    # for the direct-call server ("" disables it)
    runtime_dir: str
    host: str


@_tag("actor_call")
class ActorCall(NamedTuple):
    """One method call that came through the head; answered by :class:`Done`."""

    task_id: int
    method: str
    args: bytes
    deps: dict[int, Any]


@_tag("result")
class CallResult(NamedTuple):
    """The answer to a worker's :class:`Call`."""

    ref: int
    status: int
    data: bytes
    message: str


@_tag("alloc_reply")
class AllocReply(NamedTuple):
    """The answer to a worker's :class:`Alloc`: a store file (for a seal: the sealed
    object's file), or ``path == ""`` and why."""

    ref: int
    path: str
    error: str
    node_id: int = 0                 # this node's id (a sealed object's holder)


@_tag("exit")
class Exit(NamedTuple):
    """Exit after the current frame."""


# ---- worker -> daemon -------------------------------------------------------------------


@_tag("ready")
class Ready(NamedTuple):
    """The worker has started and takes work."""

    pid: int


@_tag("done")
class Done(NamedTuple):
    """A task or actor call finished (``data`` as described in the module docstring)."""

    task_id: int
    status: int
    data: Any
    seconds: float
    message: str


@_tag("created")
class Created(NamedTuple):
    """An actor was constructed (or failed to be); ``route`` reaches its direct-call
    server ("" when it has none)."""

    actor_id: int
    status: int
    data: Any
    seconds: float
    message: str
    route: str


@_tag("log")
class Log(NamedTuple):
    """Print output of a running task."""

    task_id: int
    name: str
    text: str
    is_stderr: bool


@_tag("call")
class Call(NamedTuple):
    """An app on the worker calls an actor method; answered by :class:`CallResult`."""

    ref: int
    actor_id: int
    method: str
    args: bytes
    deps: list[int]


@_tag("alloc")
class Alloc(NamedTuple):
    """Room in the node's store for a result of ``size`` bytes; answered by
    :class:`AllocReply`.

    With ``seal_id``, nothing is allocated: the file at ``path`` (from an earlier Alloc)
    is sealed as object ``seal_id`` (a direct actor call's large result, which no Done
    carries to the daemon), and the reply comes once it is readable. (A field of Alloc
    rather than a message of its own: the two travel together and share the reply.)
    """

    ref: int
    size: int
    seal_id: int = 0
    path: str = ""


# ---- dynamic workflows: an app's nested client (cluster/worker/nested.py) ----------------


@_tag("n_out")
class NestedOut(NamedTuple):
    """Worker -> daemon: one serialized DriverToHead of the worker's nested client, which
    the daemon forwards to the head on its own stream."""

    payload: bytes


@_tag("n_in")
class NestedIn(NamedTuple):
    """Daemon -> worker: one serialized HeadToDriver for the worker's nested client."""

    payload: bytes


@_tag("n_end")
class NestedEnd(NamedTuple):
    """Worker -> daemon: task `task_id`, which submitted tasks, has ended (sent after its
    :class:`Done`); with `failed`, the children it started are cancelled."""

    task_id: int
    failed: bool


@_tag("pull")
class Pull(NamedTuple):
    """Worker -> daemon: bring stored object `object_id` into this node's store from one of
    `sources` (object servers) for the worker's nested client (which holds no secret to
    fetch it itself); answered by :class:`AllocReply` (the file, or ``path == ""`` and
    why)."""

    ref: int
    object_id: int
    sources: list[str]


@_tag("blocked")
class Blocked(NamedTuple):
    """Worker -> daemon: task `task_id` waits for other tasks. Its CPUs are free while it
    waits, and with `inline` the worker can run one queued task meanwhile (a :class:`Run`
    may come; not while it waits for an actor call's answer)."""

    task_id: int
    inline: bool = True


@_tag("hand_back")
class HandBack(NamedTuple):
    """Worker -> daemon: prefetched tasks (:class:`RunAfter` with `after` 0) this worker
    will not run: its task waits (for tasks or an actor's answer), and what it waits for
    may be one of them. The daemon queues them again, in order."""

    task_ids: list[int]


@_tag("unblocked")
class Unblocked(NamedTuple):
    """Worker -> daemon: task `task_id` runs again and takes its CPUs back."""

    task_id: int


# ---- direct actor calls: caller <-> actor worker ------------------------------------------


@_tag("c")
class DirectCall(NamedTuple):
    """A caller's method call straight to the actor's worker."""

    call_id: int
    method: str
    args: bytes


@_tag("r")
class DirectReply(NamedTuple):
    """The worker's answer to a :class:`DirectCall` or :class:`DirectTask`: ``data`` is
    the pickled value, ``("stored", size, node id, nested refs)`` for a result sealed in
    the worker's node store under ``call_id``, or ``("inline", bytes, nested refs)`` for a
    small one with refs inside (the caller registers either with the head, as a put, and
    with refs inside answers :class:`DirectAck` once the head has it)."""

    call_id: int
    status: int
    data: Any
    message: str


@_tag("t")
class DirectTask(NamedTuple):
    """A driver's task sent straight to the worker it leases (see :mod:`api._lease`): run
    function `fn_id` (its pickled body in `fn_blob` the first time this worker sees it)
    on `args` in `cwd`, and answer with a :class:`DirectReply` under `call_id`."""

    call_id: int
    fn_id: bytes
    fn_blob: bytes
    name: str
    args: bytes
    cwd: str


@_tag("ack")
class DirectAck(NamedTuple):
    """Caller -> worker: the head now holds the refs inside the result of `call_id` (the
    caller's put of it arrived there first), so the worker may let its own go."""

    call_id: int


@_tag("denied")
class Denied(NamedTuple):
    """The caller's first frame was not the cluster secret; the connection closes."""


assert len(TYPES) == 26, "a message type without its tag"

#: Any one message.
Message = (Fn | Run | RunAfter | ActorCreate | ActorCall | CallResult | AllocReply | Exit
           | Ready | Done | Created | Log | Call | Alloc | DirectCall | DirectReply | DirectTask
           | DirectAck | Denied | NestedOut | NestedIn | NestedEnd | Pull | Blocked | HandBack
           | Unblocked)

_new = tuple.__new__


def pack(message: tuple) -> tuple:
    """The plain tuple that carries `message` on the wire: ``(TAG, *fields)``. A plain
    tuple passes through unchanged (already in wire form)."""
    try:
        return (message.TAG, *message)  # type: ignore[attr-defined]
    except AttributeError:
        return message


def unpack(raw: tuple) -> Any:
    """The message a wire tuple stands for (KeyError for an unknown tag)."""
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (the fields are complete).
    return _new(TYPES[raw[0]], raw[1:])
