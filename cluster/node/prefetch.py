"""Prefetch on a daemon: queued tasks handed to busy workers, to start the moment their
current task ends there (when: :mod:`cluster.policy.prefetch`).

A prefetched task leaves the daemon's queue for the worker's ``prefetched`` list and its
frame (:class:`RunAfter` with `after` 0) waits in the worker's socket. It takes its
resources only when the worker's task ends: the daemon, reading that Done, books the next
prefetched task as started in the same slot (the same resource request), as the worker
starts it without a message in between. Until then it is queued work of this node:

- cancelled, it ends CANCELLED as it starts (the worker is killed then, as for a staged
  task sent ahead: :mod:`cluster.node.staged`);
- its worker lost (crashed, killed with its task), it goes back to the front of the queue:
  it never started;
- its worker's task waits (for tasks, or an actor's answer), the worker hands it back
  (:class:`HandBack`): what the task waits for may be it.

Only tasks that need nothing set up per start are prefetched (the same rule as staged
tasks': :func:`cluster.node.staged.presendable`), to workers with nothing sent ahead down
a chain, and never while the node's queue is ordered by priority. ``SHOAL_PREFETCH=0`` in
the daemon's environment turns it off.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from cluster.common.messages import Fn, RunAfter
from cluster.common.protocol import pb
from cluster.node.staged import StagedTasks, presendable
from cluster.policy.prefetch import PREFETCH_DEPTH, may_prefetch, slowest

if TYPE_CHECKING:
    from cluster.node.nested import NestedRelay


class Prefetching:
    """The daemon's prefetch methods (state: ``slowness``, ``prefetch_room``,
    ``prefetched_count`` here, ``WorkerHandle.prefetched`` on its workers)."""

    queue: deque[Any]
    workers: list[Any]
    stopping: bool
    functions: dict[bytes, bytes]
    staged: StagedTasks
    nested: NestedRelay
    _prioritized: bool

    if TYPE_CHECKING:  # the daemon's (cluster/node/daemon.py, cluster/node/staged.py)
        def book_started(self, worker: Any, task: Any) -> bool: ...

        def _report(self, spec: pb.TaskSpec, status: pb.Status, data: Any, message: str,
                    seconds: float, route: str = "", worker: Any = None) -> None: ...

        def presend(self, worker: Any) -> None: ...

        def pump(self) -> None: ...

    def init_prefetch(self) -> None:
        #: Function id -> how slow its runs here were (cluster.policy.prefetch.slowest).
        self.slowness: dict[bytes, float] = {}
        #: Workers that started a task and may take a prefetched one (checked when used;
        #: a dict as an ordered set: the one whose task started first is tried first, as
        #: it is likely to end first).
        self.prefetch_room: dict[Any, None] = {}
        #: Tasks prefetched to workers, not started: queued work of this node.
        self.prefetched_count = 0
        self.prefetched_total = 0  # started prefetched, ever (in the node's heartbeat)
        self.prefetch_off = os.environ.get("SHOAL_PREFETCH", "1") == "0"

    def may_prefetch_to(self, worker: Any) -> None:
        """`worker` has just started a task: it may take prefetched ones behind it."""
        if self.prefetch_off:
            return
        room = self.prefetch_room
        room.pop(worker, None)  # (to the end: the order is the order its tasks started)
        room[worker] = None

    def note_run(self, fn_id: bytes, seconds: float) -> None:
        """A task of `fn_id` ran for `seconds` here."""
        slowness = self.slowness
        slowness[fn_id] = slowest(slowness.get(fn_id), seconds)

    def prefetch(self) -> None:
        """Hand the front of the queue to workers with room (the queue's first task cannot
        start now: the node's resources are taken)."""
        queue, room = self.queue, self.prefetch_room
        if not room:
            return
        if self._prioritized:
            room.clear()
            return
        now = time.perf_counter()
        while queue and room:
            worker = next(iter(room))
            current = worker.task
            if current is None or worker.closing or worker.stack or worker.presented or \
                    current.spec.task_id in self.nested.blocked or not may_prefetch(
                        self.slowness.get(current.spec.fn_id), now - current.started,
                        len(worker.prefetched)):
                del room[worker]
                continue
            if not self._prefetch_to(worker, current.request):
                return  # (the queue's order stands: nothing jumps its first task)

    def _prefetch_to(self, worker: Any, request: dict[str, float]) -> bool:
        """Hand `worker` the front of the queue up to PREFETCH_DEPTH, in one write; False
        if the queue's first task may not be prefetched to it."""
        queue, prefetched = self.queue, worker.prefetched
        frames: list[tuple] = []
        fits = True
        while queue and len(prefetched) < PREFETCH_DEPTH:
            task = queue[0]
            spec = task.spec
            if task.request != request or not presendable(spec):
                fits = False
                break
            if spec.fn_id not in worker.functions:
                blob = self.functions.get(spec.fn_id)
                if blob is None:  # (the daemon reports it when it would start it)
                    fits = False
                    break
                frames.append(Fn(spec.fn_id, blob))
                worker.functions.add(spec.fn_id)
            queue.popleft()
            deps = {v.id: v.data for v in spec.dep_values}
            frames.append(RunAfter(0, (spec.task_id, spec.fn_id, spec.kind, spec.name,
                                       spec.args, deps, None, None, None, spec.cwd, None)))
            prefetched.append(task)
            self.prefetched_count += 1
        if frames:
            worker.send_many(frames)
            worker.anchor = 0  # (nothing staged is sent ahead behind what it runs now)
        if len(prefetched) >= PREFETCH_DEPTH:
            del self.prefetch_room[worker]
        return fits

    def start_prefetched(self, worker: Any) -> None:
        """`worker` ended its task: book the first task prefetched to it as running there
        (it has started it), if it has one and has no other task now."""
        if not worker.prefetched or worker.task is not None or self.stopping:
            return
        task = worker.prefetched.popleft()
        self.prefetched_count -= 1
        self.prefetched_total += 1
        if not self.book_started(worker, task):
            return  # (killed: the others go back to the queue)
        if not worker.prefetched:
            worker.anchor = task.spec.task_id  # (a staged task behind it may go ahead)
            if self.staged.behind:
                self.presend(worker)
        self.may_prefetch_to(worker)

    def requeue_prefetched(self, worker: Any, task_ids: list[int] | None = None) -> None:
        """Put tasks prefetched to `worker` back at the front of the queue, in order: those
        of `task_ids` (it handed them back; the daemon pumps then), or all (it is lost:
        unless the node stops, when the head re-runs what was queued here). A cancelled
        one ends CANCELLED instead."""
        self.prefetch_room.pop(worker, None)  # (not again before its next task)
        if not worker.prefetched or self.stopping:
            return
        if task_ids is None:
            back, worker.prefetched = list(worker.prefetched), deque()
        else:
            wanted = set(task_ids)
            back = [t for t in worker.prefetched if t.spec.task_id in wanted]
            worker.prefetched = deque(t for t in worker.prefetched
                                      if t.spec.task_id not in wanted)
        self.prefetched_count -= len(back)
        killed = self.staged.kill_on_start
        for task in reversed(back):
            if task.spec.task_id in killed:  # (_report makes it CANCELLED)
                self._report(task.spec, pb.CANCELLED, b"", "cancelled before it started", 0.0)
            else:
                self.queue.appendleft(task)
        if task_ids is not None:
            self.pump()

    def cancel_prefetched(self, task_id: int) -> pb.CancelReply | None:
        """Cancelling `task_id`: if it is prefetched to a worker, it ends CANCELLED as it
        would start there (the answer is that it was cancelled); None if it is not."""
        if not self.prefetched_count:
            return None
        for worker in self.workers:
            for task in worker.prefetched:
                if task.spec.task_id == task_id:
                    self.staged.kill_on_start.add(task_id)
                    return pb.CancelReply(task_id=task_id, cancelled=True)
        return None
