"""The head's records of tasks, nodes and drivers, and the task lifecycle.

A task's ``state`` says where it is; only :meth:`cluster.head.state.Head.set_state` changes
it, and only along :data:`TRANSITIONS`. Where each state keeps the task (checked by
``Head.validate``):

- ``WAITING``: in ``head.tasks``, registered in ``head.waiters`` under each argument still
  pending (actor calls also sit in their actor's ordered queue);
- ``QUEUED``: in ``head.tasks`` and in exactly one queue: ``head.ready`` (by resource
  shape), ``head.gangs`` (multi-node apps) or its actor's queue (calls);
- ``STAGED``: sent ahead to the node computing its one missing argument, to start there
  the moment that argument is made (:mod:`cluster.head.staging`): in ``head.tasks``, its
  node's ``staged`` and, until that input's result comes, ``head.staging.heirs`` under
  the input; holding nothing (it takes over its input's slot when it starts);
- ``RUNNING``: in ``head.tasks`` and its node's ``running`` (actor calls: in their actor's
  ``inflight``), holding the resources it reserved;
- ``CANCELLING``: as RUNNING, but its node was told to stop it (its driver left, or
  ``api.cancel(force=True)``); whatever result comes back ends it as cancelled, never
  retried;
- ``DECIDING``: it failed and its driver's ``retry_handler`` is asked whether to run it
  again: in ``head.tasks`` and ``head.failures.deciding``, holding nothing (dependents keep
  waiting);
- ``HOSTING``: an actor's creation that succeeded: out of ``head.tasks``, still in its
  node's ``running`` so the actor keeps its resources while it lives;
- ``DONE``, ``FAILED``: nowhere (lineage may keep a done task's record to re-run it). A
  cancelled task is FAILED with status CANCELLED: cancelling ends a task from every live
  state, exactly as failing does, so a state of its own would only double those edges.

>>> allowed(TaskState.QUEUED, TaskState.RUNNING)
True
>>> allowed(TaskState.DONE, TaskState.RUNNING)
False
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Protocol

from cluster.common.protocol import fill, pb
from cluster.policy import scheduler


class TaskState(enum.Enum):
    """Where a task is in its life (see the module docstring for where each keeps it)."""

    NEW = "new"
    WAITING = "waiting"
    QUEUED = "queued"
    STAGED = "staged"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DECIDING = "deciding"
    HOSTING = "hosting"
    DONE = "done"
    FAILED = "failed"


_S = TaskState
#: Every allowed move of a task's state; anything else is a bug in the head.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.NEW: frozenset({_S.WAITING, _S.QUEUED, _S.FAILED}),
    # WAITING -> STAGED: its one missing argument is being made on a node; it waits there.
    _S.WAITING: frozenset({_S.QUEUED, _S.STAGED, _S.FAILED}),
    # QUEUED -> WAITING: an argument became pending again (lineage rebuilds it).
    _S.QUEUED: frozenset({_S.RUNNING, _S.WAITING, _S.FAILED}),
    # RUNNING -> QUEUED: a retry; -> WAITING: an argument vanished and is being rebuilt.
    _S.RUNNING: frozenset({_S.DONE, _S.FAILED, _S.QUEUED, _S.WAITING, _S.HOSTING,
                           _S.CANCELLING, _S.DECIDING}),
    # STAGED -> RUNNING: its input succeeded, so its node started it; -> WAITING, QUEUED,
    # FAILED: its node sent it back (the input failed, or had ended when it arrived).
    _S.STAGED: frozenset({_S.RUNNING, _S.WAITING, _S.QUEUED, _S.FAILED, _S.CANCELLING}),
    _S.CANCELLING: frozenset({_S.FAILED}),
    # The driver's retry_handler answers: run again, or the failure is final.
    _S.DECIDING: frozenset({_S.QUEUED, _S.FAILED}),
    # An actor whose worker or node died is placed again (restart), or is gone.
    _S.HOSTING: frozenset({_S.QUEUED, _S.FAILED, _S.DONE}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
}
#: States in which a task is in ``head.tasks``.
LIVE = frozenset({_S.WAITING, _S.QUEUED, _S.STAGED, _S.RUNNING, _S.CANCELLING,
                  _S.DECIDING})
#: States in which a task holds resources on a node.
HOLDING = frozenset({_S.RUNNING, _S.CANCELLING, _S.HOSTING})


def allowed(old: TaskState, new: TaskState) -> bool:
    """Whether a task may move from `old` to `new`."""
    return new in TRANSITIONS[old]


class InvalidTransition(RuntimeError):
    """The head tried to move a task along a transition the table does not allow."""


class Conn(Protocol):
    """A connection the head can send batches on."""

    def send(self, message: object) -> None: ...

    def close(self) -> None: ...


#: A task holding nothing shares this (never mutated: reserving replaces it): an empty
#: dict per task was 64 of the ~500 bytes of a queued task.
NOTHING_RESERVED: dict[int, dict[str, float]] = {}
#: A ready queue longer than this keeps its later tasks' specs serialized
#: (:meth:`Task.compact`): a parsed TaskSpec costs ~1.4 KB of the head's memory (its upb
#: message plus the share of its batch's arena it pins), the bytes ~150 B, and a task that
#: far back waits anyway; parsing it again at dispatch costs ~2 us.
COMPACT_AFTER = 20_000


@dataclass(slots=True, eq=False)
class Task:
    """A task the head knows of: an app call, an actor's creation or an actor call.

    ``spec`` is the task's protobuf message; a task far back in a long queue holds it as
    bytes instead (``raw``, see :meth:`compact`) and it is parsed again when first read.
    """

    msg: pb.TaskSpec | None
    request: dict[str, float]
    shape: bytes
    state: TaskState = TaskState.NEW
    pending: int = 0                 # arguments still being produced
    node_id: int = 0
    attempts: int = 0
    reserved: dict[int, dict[str, float]] = field(
        default_factory=lambda: NOTHING_RESERVED)  # node id -> held
    task_id: int = 0                 # the task's id (also the id of its result object)
    kind: int = 0                    # spec.kind, readable without parsing a compact spec
    raw: bytes = b""                 # the serialized spec while compact
    bounced: bool = False            # staged once and sent back: never staged again

    def __post_init__(self) -> None:
        msg = self.msg
        if msg is not None:
            if not self.task_id:  # (callers that have the id pass it: one int object)
                self.task_id = msg.task_id
            self.kind = msg.kind

    @property
    def spec(self) -> pb.TaskSpec:
        """The task's spec (parsed again if the task was compacted)."""
        msg = self.msg
        if msg is None:
            msg = self.msg = pb.TaskSpec.FromString(self.raw)
            self.raw = b""
        return msg

    def deps(self) -> list[int]:
        """The spec's dependencies, without un-compacting a compact task (a scan of every
        queued task must not turn a million compact specs back into parsed ones)."""
        msg = self.msg
        return list((msg if msg is not None else pb.TaskSpec.FromString(self.raw)).deps)

    def compact(self) -> None:
        """Keep the spec as bytes until it is read again (a queued task's memory)."""
        if self.msg is not None:
            self.raw = self.msg.SerializeToString()
            self.msg = None


@dataclass(slots=True, eq=False)
class Node:
    """A daemon that registered, alive or lost."""

    node_id: int
    name: str
    address: str
    pid: int
    conn: Conn
    view: scheduler.NodeView
    running: dict[int, Task] = field(default_factory=dict)
    staged: dict[int, Task] = field(default_factory=dict)  # sent ahead (cluster.head.staging)
    functions: set[bytes] = field(default_factory=set)
    outbox: list[pb.TaskSpec] = field(default_factory=list)
    mean_seconds: float | None = None
    alive: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    heartbeat: pb.Heartbeat = field(default_factory=pb.Heartbeat)
    done: int = 0
    remote: bool = True
    block_id: str = ""
    draining: bool = False
    actors: set[int] = field(default_factory=set)
    idle_since: float | None = field(default_factory=time.monotonic)
    store_address: str = ""
    store_dir: str = ""
    deletes: list[int] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    cancel_queued: list[pb.CancelRequest] = field(default_factory=list)  # if not started
    lost_reason: str = ""  # why it was lost (the history and the dashboard show it)
    sent_at: float = 0.0             # when its last task batch was sent
    awaiting: bool = False           # that batch is not answered yet (see dispatch.flush)

    def finished(self, seconds: float) -> None:
        """A task ran here for `seconds`: count it, and let the queue allowance follow the
        mean run time (short tasks: a deeper queue on the daemon)."""
        self.done += 1
        if not self.running:
            self.idle_since = time.monotonic()
        mean = self.mean_seconds
        self.mean_seconds = seconds if mean is None else 0.8 * mean + 0.2 * seconds
        self.view.factor = scheduler.queue_factor(self.mean_seconds)

    def info(self) -> pb.NodeInfo:
        """The node as the protocol describes it."""
        beat = self.heartbeat
        info = pb.NodeInfo(node_id=self.node_id, name=self.name, address=self.address,
                           state="alive" if self.alive else "dead", pid=self.pid,
                           running=len(self.running), queued=beat.queued,
                           workers=beat.workers, done=self.done, block_id=self.block_id,
                           draining=self.draining, store_address=self.store_address,
                           store_dir=self.store_dir, prefetched=beat.prefetched)
        info.store.CopyFrom(beat.store)
        fill(info.total, self.view.total)
        fill(info.used, {k: v for k, v in self.view.used.items() if v > 1e-9})
        return info

    def take_batch(self) -> pb.HeadToNode | None:
        """The tasks, deletions and cancellations gathered since the last call, as one
        message."""
        if not (self.outbox or self.deletes or self.cancels or self.cancel_queued):
            return None
        message = pb.HeadToNode(tasks=self.outbox, delete=self.deletes, cancel=self.cancels)
        if self.cancel_queued:
            message.cancel_queued.extend(self.cancel_queued)
            self.cancel_queued = []
        self.outbox, self.deletes, self.cancels = [], [], []
        return message


@dataclass(slots=True, eq=False)
class Driver:
    """A connected driver (or a node whose apps call actors, see ``NODE_CALLER_BASE``),
    with the references it holds and what waits to be sent to it."""

    driver_id: int
    conn: Conn
    hostname: str = ""
    pid: int = 0
    refs: dict[int, int] = field(default_factory=dict)
    results: list[pb.TaskResult] = field(default_factory=list)
    logs: list[pb.LogLine] = field(default_factory=list)
    replies: list[pb.GetReply] = field(default_factory=list)
    nodes: list[pb.NodeInfo] = field(default_factory=list)
    lookups: list[pb.ActorLookupReply] = field(default_factory=list)
    cancel_replies: list[pb.CancelReply] = field(default_factory=list)

    def take_batch(self) -> pb.HeadToDriver | None:
        """Everything gathered for the driver since the last call, as one message."""
        if not (self.results or self.logs or self.replies or self.nodes or self.lookups
                or self.cancel_replies):
            return None
        message = pb.HeadToDriver(results=self.results, logs=self.logs, replies=self.replies,
                                  nodes=self.nodes, lookups=self.lookups)
        if self.cancel_replies:
            message.cancel_replies.extend(self.cancel_replies)
            self.cancel_replies = []
        self.results, self.logs, self.replies, self.nodes, self.lookups = [], [], [], [], []
        return message

    def hold(self, object_id: int) -> None:
        """The driver holds one more reference to `object_id`."""
        self.refs[object_id] = self.refs.get(object_id, 0) + 1


class NodeCallerConn:
    """Results for calls that apps on a node made: delivered to that node's daemon."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def send(self, message: object) -> None:
        """Forward the results in `message` (a HeadToDriver batch) to the node."""
        if isinstance(message, pb.HeadToDriver) and message.results and self._node.alive:
            self._node.conn.send(pb.HeadToNode(results=message.results))

    def close(self) -> None:
        """Nothing to close: the node's own stream carries these."""
