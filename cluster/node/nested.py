"""Dynamic workflows, the daemon's side: relaying apps' nested clients, and blocked tasks.

- **Relay**: a worker's nested client (``api._nested``) sends serialized DriverToHead
  batches as :class:`NestedOut` frames; they go to the head inside this daemon's own
  stream as :class:`pb.NestedFrame` s, under a channel number naming the worker. The
  head's answers come back the same way (:class:`NestedIn`).
- **Blocked tasks give their CPUs back** (:class:`Blocked` / :class:`Unblocked`): only
  CPUs, never GPUs or memory, here and on the head's books. The freed slots take more
  tasks: an idle worker; else a *waiting* worker whose task is the queued task's parent
  (it runs its child inside its wait, then waits on: the stack grows by one task, as deep
  as the recursion, and the parent could not go on without it anyway); else a new worker
  while the node has fewer than ``Daemon.max_workers`` (the per-node cap: ``4 x CPUs``
  and at least the initial workers; extra ones exit after :data:`EXTRA_IDLE_SECONDS`
  idle); else, at the cap, any waiting worker; else the task waits for a worker to free
  up, unless every worker's task has waited :data:`STALL_SECONDS`, when one more worker
  starts past the cap (none would free up). This cannot deadlock while tasks wait only
  for tasks they submitted (or those did): a waiting task resumes once what it waits for
  and everything stacked above it have ended, and both started after it did, so no wait
  ever leads back to an older task. Stacks do grow deep (fib(16) on 2 CPUs: 120-139
  tasks on each of 8 workers), so a worker raises its recursion limit with each task it
  runs inside a wait (``cluster.worker.nested.FRAMES_PER_INLINE``: at the default limit
  that depth failed the tree, or the run hung) and offers no wait past
  ``MAX_INLINE_DEPTH``. A deep recursion cannot fork-bomb the node: its children go onto
  their parents' stacks. Tasks submitted inside tasks go newest first (depth first), here
  and in the head's queues.

A worker's ``task`` is the task it runs now; ``stack`` holds the tasks under it, blocked in
a wait (an empty list for every ordinary worker: the hot path only checks it is empty).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.common.messages import (
    AllocReply,
    Blocked,
    NestedEnd,
    NestedIn,
    NestedOut,
    Pull,
    Unblocked,
)
from cluster.common.protocol import pb
from cluster.node.workerpool import WorkerHandle

NESTED_TYPES = (NestedOut, NestedEnd, Pull, Blocked, Unblocked)
#: Seconds an extra worker (beyond the node's initial ones, started while tasks waited)
#: may stay idle before it exits.
EXTRA_IDLE_SECONDS = 10.0
#: Seconds every worker's task must have waited, with a queued task none of them may take,
#: before one more worker starts past the cap. (At once, a moment when every task waits
#: for a child the head has not sent yet would grow the node past its cap.)
STALL_SECONDS = 0.5


class NestedRelay:
    """The nested channels and blocked tasks of one daemon."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.channels: dict[int, WorkerHandle] = {}
        self._next_channel = 1
        #: Workers blocked in a wait that can run one queued task meanwhile, by the id of
        #: the task that waits.
        self.waiting: dict[int, WorkerHandle] = {}
        #: Blocked task id -> the CPUs it gave back.
        self.blocked: dict[int, float] = {}
        self.frames: list[pb.NestedFrame] = []
        #: Task id -> blocked, for the head: only a task's last state in a batch counts
        #: (the head applies blocked before unblocked, so order must not matter).
        self.cpu_out: dict[int, bool] = {}
        self._idle_since: dict[WorkerHandle, object] = {}
        self._stall_timer: asyncio.TimerHandle | None = None  # (see may_grow_past_cap)
        self._stalled = False
        #: Waiting tasks whose walltime passed (their worker was killed for it).
        self.expired: set[int] = set()

    def pending(self) -> bool:
        """Anything to send to the head."""
        return bool(self.frames or self.cpu_out)

    def take(self) -> dict[str, list[Any]]:
        """The NodeToHead fields to send (and forget)."""
        states = self.cpu_out
        out: dict[str, list[Any]] = {
            "nested": self.frames, "blocked": [t for t, b in states.items() if b],
            "unblocked": [t for t, b in states.items() if not b]}
        self.frames, self.cpu_out = [], {}
        return out

    def _channel(self, worker: WorkerHandle) -> int:
        if not worker.channel:
            worker.channel = self._next_channel
            self._next_channel += 1
            self.channels[worker.channel] = worker
        return worker.channel

    # ---- from workers ------------------------------------------------------------------
    def on_worker_message(self, worker: WorkerHandle, message: Any) -> None:
        """One of :data:`NESTED_TYPES` from `worker`."""
        kind = type(message)
        daemon = self.daemon
        if kind is NestedOut:
            self.frames.append(pb.NestedFrame(channel=self._channel(worker),
                                              payload=message.payload))
        elif kind is NestedEnd:
            self.frames.append(pb.NestedFrame(channel=self._channel(worker),
                                              ended=message.task_id, failed=message.failed))
        elif kind is Blocked:
            task = self._find(worker, message.task_id) or self._hosted(worker, message.task_id)
            if task is not None:
                if message.task_id not in self.blocked:
                    cpus = task.request.get("cpus", 0.0)
                    self.blocked[message.task_id] = cpus
                    daemon.free["cpus"] = daemon.free.get("cpus", 0.0) + cpus
                    self.cpu_out[message.task_id] = True
                if task is worker.task and not worker.waiting and message.inline:
                    worker.waiting = True
                    self.waiting[message.task_id] = worker
                daemon.pump()
        elif kind is Unblocked:
            self._unblock(worker, message.task_id)
            daemon.pump()
        elif kind is Pull:
            self._pull(worker, message)
        daemon.schedule_flush()

    def _pull(self, worker: WorkerHandle, message: Pull) -> None:
        """Bring an object another node holds into this node's store for a nested client
        (the way a task's arguments come), then tell the worker its file."""
        daemon, ref, object_id = self.daemon, message.ref, message.object_id
        store = daemon.store
        if store is None or daemon.puller is None:
            worker.send(AllocReply(ref, "", f"{daemon.name} has no object store"))
            return

        def answer() -> None:
            try:
                worker.send(AllocReply(ref, store.path(object_id), "", daemon.node_id))
            except (KeyError, MemoryError) as err:
                worker.send(AllocReply(ref, "", f"{daemon.name}: {err}"))

        if object_id in store:
            answer()
            return

        def arrived(done: Any) -> None:
            try:
                done.result()
            except Exception as err:  # noqa: BLE001 - the worker hears why
                worker.send(AllocReply(ref, "", f"could not bring it to {daemon.name}: {err}"))
                return
            daemon.copies.append(object_id)  # the head learns this node holds a copy
            daemon.schedule_flush()
            answer()

        daemon.puller.fetch(object_id, list(message.sources)).add_done_callback(arrived)

    def _unblock(self, worker: WorkerHandle, task_id: int) -> None:
        cpus = self.blocked.pop(task_id, None)
        if cpus is not None:
            daemon = self.daemon
            daemon.free["cpus"] = daemon.free.get("cpus", 0.0) - cpus
            self.cpu_out[task_id] = False
        self._not_waiting(worker)

    def _not_waiting(self, worker: WorkerHandle) -> None:
        if worker.waiting:
            worker.waiting = False
            for task_id, other in list(self.waiting.items()):
                if other is worker:
                    del self.waiting[task_id]

    def _hosted(self, worker: WorkerHandle, actor_id: int) -> Any:
        """The creation record of the actor `worker` holds, if it is `actor_id`: a task a
        driver leased the worker for (api._lease) gives the actor's CPUs back to wait."""
        host = self.daemon.actors.get(actor_id)
        return host.create if host is not None and host.worker is worker else None

    @staticmethod
    def _find(worker: WorkerHandle, task_id: int) -> Any:
        for task in (worker.task, *worker.stack):
            if task is not None and task.spec.task_id == task_id:
                return task
        return None

    def retire_later(self, worker: WorkerHandle) -> None:
        """Stop `worker`, an extra one, if it is still idle in :data:`EXTRA_IDLE_SECONDS`."""
        daemon = self.daemon
        token = self._idle_since[worker] = object()  # a later idle spell replaces it

        def retire() -> None:
            if self._idle_since.get(worker) is not token:
                return
            del self._idle_since[worker]
            if daemon.stopping or worker.closing or worker not in daemon.idle or \
                    len(daemon.workers) <= daemon.num_workers:
                return
            daemon.idle.remove(worker)
            worker.stop()

        (daemon.loop or asyncio.get_event_loop()).call_later(EXTRA_IDLE_SECONDS, retire)

    # ---- running tasks on waiting workers ------------------------------------------------
    def take_waiting(self, task: Any, at_cap: bool) -> WorkerHandle | None:
        """A waiting worker to run `task` on, inside the wait (the waiting task goes on
        its stack): the one whose task is its parent (it cannot go on without it anyway,
        and the stack stays as deep as the recursion), or with `at_cap` (the node is at
        its worker cap) any waiting worker (the module's docstring says why that cannot
        deadlock)."""
        waiting = self.waiting
        if not waiting:
            return None
        parent = task.spec.parent_task
        worker = waiting.pop(parent, None) if parent else None
        if worker is None and at_cap:
            worker = waiting.pop(next(iter(waiting)))
        if worker is None:
            return None
        worker.waiting = False
        if worker.task is None or worker.closing:
            return None
        worker.stack.append(worker.task)
        worker.task = None
        return worker

    def may_grow_past_cap(self) -> bool:
        """Whether one more worker may start past the cap: every worker's task has waited
        for :data:`STALL_SECONDS` (none will free up, and what they wait for may be the
        queued task). The first call of such a spell starts its timer, which pumps again
        when it runs out; a worker's task going on ends the spell."""
        blocked = self.blocked
        if not all(w.task is not None and w.task.spec.task_id in blocked
                   for w in self.daemon.workers):
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            self._stalled = False
            return False
        if self._stalled:  # (the next spell waits again)
            self._stalled, self._stall_timer = False, None
            return True
        if self._stall_timer is None:
            loop = self.daemon.loop or asyncio.get_event_loop()
            self._stall_timer = loop.call_later(STALL_SECONDS, self._stall_passed)
        return False

    def _stall_passed(self) -> None:
        self._stalled = True
        self.daemon.pump()

    def finished(self, worker: WorkerHandle, task_id: int) -> Any:
        """`worker` with a stack sent Done for `task_id`: that task (its CPUs back on the
        books if it had blocked); the worker's current task is the next one down."""
        task = self._find(worker, task_id)
        if task is None:
            return None
        if task is worker.task:
            worker.task = worker.stack.pop() if worker.stack else None
        else:
            worker.stack.remove(task)
        self._forget(task_id)
        return task

    def _forget(self, task_id: int) -> None:
        cpus = self.blocked.pop(task_id, None)
        if cpus is not None:  # _release gives back its whole request: take the CPUs first
            daemon = self.daemon
            daemon.free["cpus"] = daemon.free.get("cpus", 0.0) - cpus

    def lost(self, worker: WorkerHandle) -> list[Any]:
        """`worker` died: close its channel; the tasks on its stack (the caller reports
        them as crashed with its current one)."""
        self._not_waiting(worker)
        if worker.channel:
            self.channels.pop(worker.channel, None)
            self.frames.append(pb.NestedFrame(channel=worker.channel, closed=True))
            self.daemon.schedule_flush()
        stacked, worker.stack = worker.stack, []
        for task in (worker.task, *stacked):
            if task is not None:
                self._forget(task.spec.task_id)
        return stacked

    def lost_status(self, task: Any, worker: WorkerHandle,
                    node: str) -> tuple[pb.Status, bytes, str]:
        """(status, data, message) of a task that waited in a worker that died."""
        if task.spec.task_id in self.expired:
            self.expired.discard(task.spec.task_id)
            return (pb.TIMEOUT, b"", f"walltime of {task.spec.walltime:g}s exceeded; the "
                    "app was killed")
        return (pb.WORKER_CRASHED, b"", f"worker process {worker.pid} on {node} died while "
                "the task waited for others")

    def holds(self, worker: WorkerHandle, task_id: int) -> bool:
        """Whether `task_id` runs (or waits) on `worker`."""
        return self._find(worker, task_id) is not None

    # ---- from the head -----------------------------------------------------------------
    def deliver(self, frames: Any) -> None:
        """HeadToDriver frames for workers' nested clients."""
        for frame in frames:
            worker = self.channels.get(frame.channel)
            if worker is not None:
                worker.send(NestedIn(frame.payload))
