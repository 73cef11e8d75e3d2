"""Staged tasks on a daemon: tasks the head sent ahead behind a task here (their *input*),
to start the moment the input succeeds, in its slot, with its value (the head's side and
the rules both keep are in :mod:`cluster.head.staging`).

Every task the daemon was sent is *live* here until its result is reported; a staged task
whose input is no longer live (it ended before the staged one came) goes straight back to
the head (``BOUNCED``), as does one whose input did not succeed
(:func:`cluster.policy.staging.heir_runs`).

The daemon also sends staged tasks ahead to the worker running their input
(:class:`Presending`, up to :data:`PRESEND_DEPTH` down a chain): the worker starts each the
moment its input ends there (:func:`cluster.policy.staging.worker_runs`), with the value it
has, and the daemon, reading the same Done, books it as started. Measured on a 1,000-link
chain of ``inc`` on the local cluster (2 cores), alternating: see the README.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cluster.common.messages import Fn, RunAfter
from cluster.common.protocol import pb
from cluster.policy.staging import PYTHON, heir_runs, worker_runs

#: How far down a chain a worker is sent tasks ahead. Each one sent ahead is one frame the
#: daemon would send anyway; the depth bounds what a dropped chain (its input failed, or
#: its value was too big to travel inline) sent for nothing.
PRESEND_DEPTH = 32


class StagedTasks:
    """The daemon's staged tasks and the ids of the tasks it has not yet reported."""

    def __init__(self) -> None:
        #: Ids of the tasks received and not yet reported (a staged one's input must be).
        self.live: set[int] = set()
        #: Input task id -> the task staged behind it.
        self.behind: dict[int, pb.TaskSpec] = {}
        self._input_of: dict[int, int] = {}
        #: Tasks sent ahead to a worker and then cancelled: killed as they start there, or
        #: reported CANCELLED if they do not start there after all.
        self.kill_on_start: set[int] = set()

    def hold(self, spec: pb.TaskSpec) -> bool:
        """Keep `spec` (received, ``after`` set) until its input ends; False when the
        input has ended already (the caller sends it back)."""
        if spec.after not in self.live or spec.after in self.behind:
            return False
        self.behind[spec.after] = spec
        self._input_of[spec.task_id] = spec.after
        return True

    def input_of(self, task_id: int) -> int | None:
        """The input the staged task `task_id` waits for, or None."""
        return self._input_of.get(task_id)

    def take(self, task_id: int) -> pb.TaskSpec | None:
        """Take the staged task `task_id` out (cancelled before it started), or None."""
        input_id = self._input_of.pop(task_id, None)
        return self.behind.pop(input_id) if input_id is not None else None

    def ended(self, result: pb.TaskResult) -> tuple[pb.TaskSpec | None, pb.TaskSpec | None]:
        """The task of `result` is being reported: (the task staged behind it, to start
        now with its value, or None; the one to send back, or None)."""
        heir = self.behind.pop(result.task_id, None)
        if heir is None:
            return None, None
        del self._input_of[heir.task_id]
        if not heir_runs(result.status, result.nested):
            return None, heir
        if result.size:
            heir.dep_values.add(id=result.task_id, size=result.size)
        else:
            heir.dep_values.add(id=result.task_id, data=result.data)
        return heir, None


def presendable(spec: pb.TaskSpec) -> bool:
    """Whether a staged task may wait in its input's worker: a Python app with nothing the
    daemon sets up per start (walltime timer, GPUs, output files, environment, stored
    arguments to pin) and not submitted inside a task (those go first, depth-first)."""
    return (spec.kind == PYTHON and not spec.walltime and not spec.stdout and not spec.stderr
            and not spec.env and not spec.args_ref and not spec.parent_task
            and spec.ranks_per_node <= 1 and not any(v.size for v in spec.dep_values)
            and not spec.resources.gpus)  # (never a custom "gpus": protocol.fill)


class Presending:
    """The daemon's methods that start staged tasks and send them ahead to workers (state
    on the daemon and its workers: ``staged``, ``WorkerHandle.presented`` and ``anchor``)."""

    staged: StagedTasks
    functions: dict[bytes, bytes]
    workers: list[Any]
    name: str
    _results: list[pb.TaskResult]

    if TYPE_CHECKING:  # the daemon's (cluster/node/daemon.py)
        def _take(self, task: Any) -> str | None: ...

        def _new_task(self, spec: pb.TaskSpec) -> Any: ...

        def _receive(self, spec: pb.TaskSpec) -> None: ...

        def _report(self, spec: pb.TaskSpec, status: pb.Status, data: Any, message: str,
                    seconds: float, route: str = "", worker: Any = None) -> None: ...

    def heirs_after(self, result: pb.TaskResult, worker: Any = None, data: Any = None) -> None:
        """The task staged behind the one `result` reports starts: in `worker`, which
        started it already (sent ahead), or here with its value (the caller pumps); or it
        goes back to the head, and with it what was staged behind it."""
        if worker is not None and result.task_id == worker.anchor and \
                self.presented_started(worker, result, data):
            return
        staged = self.staged
        while staged.behind:  # (a loop: a 1,000-link staged chain goes back link by link)
            start, back = staged.ended(result)
            if start is not None:
                if start.task_id in staged.kill_on_start:  # (reported CANCELLED)
                    self._report(start, pb.CANCELLED, b"", "cancelled before it started", 0.0)
                else:
                    self._receive(start)
                return
            if back is None:
                return
            staged.live.discard(back.task_id)
            result = pb.TaskResult(task_id=back.task_id, status=pb.BOUNCED, node=self.name,
                                   attempt=back.attempt, message="its input did not succeed")
            if back.task_id in staged.kill_on_start:  # cancelled here: not to be re-run
                staged.kill_on_start.discard(back.task_id)
                result.status, result.message = pb.CANCELLED, "cancelled before it started"
            self._results.append(result)

    def presend(self, worker: Any) -> None:
        """Send `worker` the staged tasks down the chain behind the task it runs (or the
        last one it was sent), up to :data:`PRESEND_DEPTH`."""
        staged, presented = self.staged, worker.presented
        tail = presented[-1] if presented else worker.anchor
        while len(presented) < PRESEND_DEPTH:
            heir = staged.behind.get(tail)
            if heir is None or not presendable(heir):
                break
            if heir.fn_id not in worker.functions:
                blob = self.functions.get(heir.fn_id)
                if blob is None:
                    break
                worker.send(Fn(heir.fn_id, blob))
                worker.functions.add(heir.fn_id)
            deps = {v.id: v.data for v in heir.dep_values}
            worker.send(RunAfter(tail, (heir.task_id, heir.fn_id, heir.kind, heir.name,
                                        heir.args, deps, None, None, None, heir.cwd, None)))
            presented.append(heir.task_id)
            tail = heir.task_id

    def tail_worker(self, task_id: int) -> Any:
        """The worker running `task_id`, or last sent it ahead, or None: a staged task that
        comes behind it later is sent ahead there too. (A scan of the node's workers, on
        staged arrivals only: a dict kept per started task cost bursts more.)"""
        for worker in self.workers:
            if (worker.presented[-1] if worker.presented else worker.anchor) == task_id:
                return worker
        return None

    def presented_started(self, worker: Any, result: pb.TaskResult, data: Any) -> bool:
        """`worker` reported the task it ran (`result`, its Done's `data`): True when it
        has started the task sent ahead behind it (now booked as running there); else it
        drops every task sent ahead (they start here or go back, as staged ones do)."""
        presented, staged = worker.presented, self.staged
        if not presented:
            worker.anchor = 0
            return False
        heir = staged.behind.get(result.task_id)
        if not (heir is not None and heir.task_id == presented[0]
                and worker_runs(result.status, data)):
            self.forget_presented(worker)
            return False
        staged.ended(result)
        worker.anchor = presented.popleft()
        if self.book_started(worker, self._new_task(heir)):
            self.presend(worker)
        else:  # (what it ran after it goes back)
            self.forget_presented(worker)
        return True

    def book_started(self, worker: Any, task: Any) -> bool:
        """`worker` has started `task`, sent to it ahead (staged, or prefetched:
        cluster.node.prefetch), with no message in between: book it as running there, in
        the slot of the task that just ended. False if it was cancelled while it waited
        there: the worker is killed, and the task ends CANCELLED (the daemon's _report)."""
        self._take(task)
        worker.task = task
        worker.timed_out = False
        task.started = time.perf_counter()
        if task.spec.task_id in self.staged.kill_on_start:
            worker.closing = True
            worker.kill()
            return False
        return True

    def forget_presented(self, worker: Any) -> None:
        """`worker` will start none of the tasks sent ahead to it (or is gone)."""
        worker.presented.clear()
        worker.anchor = 0

    def cancel_sent_ahead(self, task_id: int) -> pb.CancelReply | None:
        """The answer to cancelling `task_id` when staging decides it, else None (the
        daemon looks in its backlog): a task sent ahead to a worker ends CANCELLED as it
        would start there; one staged behind a task so cancelled goes back and fails."""
        staged = self.staged
        if staged.input_of(task_id) in staged.kill_on_start:
            return pb.CancelReply(task_id=task_id, message="a task it depends on was cancelled")
        if any(task_id in w.presented for w in self.workers):
            staged.kill_on_start.add(task_id)
            return pb.CancelReply(task_id=task_id, cancelled=True)
        return None
