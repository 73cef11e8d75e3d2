"""The per-node daemon: takes batches of tasks from the head, runs them on its workers.

The daemon holds the tasks the head assigned to it in a FIFO, starts each on an idle worker
once the node's resources allow (GPUs handed out by id through CUDA_VISIBLE_DEVICES),
enforces walltimes by killing the worker's process group, replaces dead workers, and sends
results and print output back in batches: at most one message per event-loop turn.

It talks to the head through a *link* (:class:`cluster.node.headlink.HeadLink` over the
network, or an in-process link when head and daemon share a process), so this module has
no networking of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.common.messages import (
    Alloc,
    AllocReply,
    Call,
    CallResult,
    Done,
    Fn,
    HandBack,
    Log,
    Ready,
    Run,
)
from cluster.common.protocol import pb, to_dict
from cluster.node.actorhost import ActorHost, ActorHosting
from cluster.node.nested import NESTED_TYPES, NestedRelay
from cluster.node.prefetch import Prefetching
from cluster.node.staged import Presending, StagedTasks
from cluster.node.workerpool import WorkerHandle, one_node_mpi_env, worker_env
from cluster.policy import priority
from cluster.policy.staging import PYTHON, STAGE_KINDS
from cluster.store.objectstore import ObjectStore

log = logging.getLogger("shoal.daemon")
#: How long a busy daemon gathers results before sending them (see schedule_flush).
RESULT_BATCH_SECONDS = 0.002
#: ...but only while this many tasks per worker wait here. Held until the timer, a queue
#: of no-op tasks ran dry and the workers idled ~2 ms of every ~5 (the head refills only
#: once it has the results): 8,800 -> 12,700-16,100 no-op tasks/s on 2 cores.
LOW_WATER_PER_WORKER = 2
_EPS = 1e-9


class HeadLink(Protocol):
    """How a daemon sends to the head."""

    def send(self, message: pb.NodeToHead) -> None: ...


@dataclass(slots=True)
class _Task:
    spec: pb.TaskSpec
    request: dict[str, float]
    gpu_ids: list[str] = field(default_factory=list)
    started: float = 0.0
    timer: asyncio.TimerHandle | None = None
    pinned: list[int] = field(default_factory=list)


class Daemon(ActorHosting, Presending, Prefetching):
    """Runs tasks on one node's worker processes."""

    def __init__(
        self,
        name: str,
        total: dict[str, float],
        log_dir: str,
        num_workers: int | None = None,
        gpu_ids: list[str] | None = None,
    ) -> None:
        self.name = name
        self.total = dict(total)
        self.free = dict(total)
        self.log_dir = log_dir
        cpus = int(total.get("cpus", 1))
        self.num_workers = num_workers if num_workers is not None else max(1, cpus)
        self.max_workers = max(self.num_workers, 4 * max(cpus, 1))
        if gpu_ids is None:
            visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
                       if g.strip()]
            gpu_ids = visible if visible else [str(i) for i in range(int(total.get("gpus", 0)))]
        self.free_gpus: list[str] = list(gpu_ids)[: int(total.get("gpus", 0))]
        self.link: HeadLink | None = None
        self.node_id = 0
        self.queue: deque[_Task] = deque()
        self.workers: list[WorkerHandle] = []
        self.idle: deque[WorkerHandle] = deque()
        self.functions: dict[bytes, bytes] = {}
        self.done = 0
        self.stopping = False
        self.on_stop: Callable[[], None] | None = None
        self._results: list[pb.TaskResult] = []
        self._logs: list[pb.LogLine] = []
        self._flush_pending = False
        self._flush_timer: asyncio.TimerHandle | None = None  # a held flush (schedule_flush)
        self._starting = 0
        self._env = worker_env(log_dir)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.actors: dict[int, ActorHost] = {}
        #: For actors' direct-call servers: the cluster secret, this node's runtime
        #: directory and address (set by the node process).
        self.secret = b""
        self.runtime_dir = ""
        self.address = "127.0.0.1"
        self._events: list[pb.ActorEvent] = []
        self._submits: list[pb.TaskSpec] = []
        self._call_waiters: dict[int, tuple[WorkerHandle, int]] = {}
        self._call_seq = 0
        #: The node's object store and the puller filling it (set by the node process).
        self.store: ObjectStore | None = None
        self.puller: Any = None
        self.transfers: Any = None
        self.copies: list[int] = []
        #: Tasks waiting for their arguments to arrive, by id (cancellable there too).
        self._pulling: dict[int, pb.TaskSpec] = {}
        self._cancel_replies: list[pb.CancelReply] = []
        self._prioritized = False
        self.nested = NestedRelay(self)  # apps' nested clients, blocked tasks
        self.staged = StagedTasks()  # tasks sent ahead behind a task here
        self.init_prefetch()

    # ---- lifecycle -------------------------------------------------------------------
    def spawn_initial(self) -> None:
        """Start the initial worker processes now, before any event loop exists, so they
        boot while the node is still importing gRPC."""
        os.makedirs(self.log_dir, exist_ok=True)
        for _ in range(self.num_workers - len(self.workers)):
            worker = WorkerHandle(len(self.workers), self._on_worker_message,
                                  self._on_worker_lost)
            worker.spawn(self._env)
            self.workers.append(worker)
            self._starting += 1

    async def start(self) -> None:
        """Attach the initial workers to the loop (spawning them if not done yet)."""
        self.loop = asyncio.get_running_loop()
        self.spawn_initial()
        await asyncio.gather(*(w.attach() for w in self.workers))

    def _spawn(self) -> None:
        # Counted at once, not when the coroutine first runs: pump may run several times
        # before it does, and each saw room for one more (the cap was passed by tasks
        # blocked in waits, which pump often).
        worker = WorkerHandle(len(self.workers), self._on_worker_message, self._on_worker_lost)
        self.workers.append(worker)
        self._starting += 1
        asyncio.ensure_future(self._start_worker(worker))

    async def _start_worker(self, worker: WorkerHandle) -> None:
        try:
            await worker.start(self._env)
        except Exception:
            log.exception("could not start a worker")
            self.workers.remove(worker)
            self._starting -= 1

    def stop(self) -> None:
        """Stop every worker (running tasks are killed) and tell the owner."""
        if self.stopping:
            return
        self.stopping = True
        if self.link is not None:  # a planned stop: what ran here is re-run, retries kept
            self.link.send(pb.NodeToHead(leaving=True))
        for worker in self.workers:
            if worker.task is not None:
                worker.kill()
            else:
                worker.stop()
        for host in self.actors.values():
            host.killed = True
            host.worker.kill()
        loop = self.loop or asyncio.get_event_loop()
        loop.call_later(1.0, self._kill_all)
        if self.store is not None:
            self.store.close()
        if self.on_stop is not None:
            self.on_stop()

    def _kill_all(self) -> None:
        for worker in self.workers:
            worker.kill()

    def stats(self) -> tuple[int, int, int]:
        """(running, queued, workers)."""
        running = sum(1 for w in self.workers if w.task is not None)
        return running, len(self.queue) + self.prefetched_count, len(self.workers)

    # ---- from the head ---------------------------------------------------------------
    def on_head_message(self, message: pb.HeadToNode) -> None:
        """Handle one batch from the head."""
        if message.node_id:
            self.node_id = message.node_id
        staged = self.staged
        for spec in message.tasks:
            if spec.fn_blob:
                self.functions[spec.fn_id] = spec.fn_blob
            if spec.kind in STAGE_KINDS:  # (the only kinds staged tasks follow)
                staged.live.add(spec.task_id)
            if not spec.after:
                self._receive(spec)
            elif not staged.hold(spec):  # its input has ended: back it goes
                self._report(spec, pb.BOUNCED, b"", "its input had ended here", 0.0)
            elif (worker := self.tail_worker(spec.after)) is not None:
                self.presend(worker)  # its input's worker may start it
        for object_id in message.delete:
            if self.store is not None:
                self.store.delete(object_id)
        self._after_head_message(message)

    def _receive(self, spec: pb.TaskSpec) -> None:
        if any(v.size for v in spec.dep_values) and not self._local(spec):
            return  # comes back through _accept once its objects are here
        self._accept(spec)

    def _new_task(self, spec: pb.TaskSpec) -> _Task:
        return _Task(spec, to_dict(spec.resources))

    def _accept(self, spec: pb.TaskSpec) -> None:
        """A task whose dependencies are all on this node."""
        if spec.kind == pb.ACTOR_CALL:
            host = self.actors.get(spec.actor_id)
            if host is None:
                self._report(spec, pb.ACTOR_DIED, b"", "the actor is not on this node", 0.0)
            else:
                host.queue.append(spec)
                self._pump_actor(host)
        elif spec.kind == pb.ACTOR_CREATE:
            self._create_actor(self._new_task(spec))
        elif spec.priority or self._prioritized:  # (once one has a priority: in order)
            self._prioritized = True
            priority.insert(self.queue, self._new_task(spec), spec.priority,
                            _priority_of)
        elif spec.parent_task:  # submitted inside a task: newest first (depth-first)
            self.queue.appendleft(self._new_task(spec))
        else:
            self.queue.append(self._new_task(spec))

    def _after_head_message(self, message: pb.HeadToNode) -> None:
        if message.nested:
            self.nested.deliver(message.nested)
        for task_id in message.cancel:
            self._cancel(task_id)
        if message.cancel_queued:
            for request in message.cancel_queued:
                self._cancel_queued(request.task_id)
            self.schedule_flush()
        for actor_id in message.kill_actor:
            host = self.actors.pop(actor_id, None)
            if host is not None:
                host.killed = True
                host.worker.kill()
                self._release(host.create)
        for result in message.results:
            waiter = self._call_waiters.pop(result.task_id, None)
            if waiter is not None:
                worker, ref = waiter
                worker.send(CallResult(ref, result.status, result.data, result.message))
        if message.shutdown:
            self.stop()
            return
        self.pump()

    # ---- objects ---------------------------------------------------------------------------
    def _local(self, spec: pb.TaskSpec) -> bool:
        """True if the task's stored dependencies are all here; else pull the missing ones
        and accept the task when they have arrived (or fail it if they cannot come)."""
        store = self.store
        missing = [v for v in spec.dep_values if v.size and v.id not in store] \
            if store is not None else []
        if not missing:
            return True
        if store is None or self.puller is None:
            self._report(spec, pb.OBJECT_LOST, b"", "this node has no object store", 0.0)
            return False
        fetches = [self.puller.fetch(v.id, list(v.sources)) for v in missing]
        ids = [v.id for v in missing]
        self._pulling[spec.task_id] = spec

        def arrived(done: asyncio.Future[Any]) -> None:
            if self.stopping:
                return
            wanted = self._pulling.pop(spec.task_id, None) is not None
            try:
                done.result()
            except Exception as err:  # noqa: BLE001 - reported with the task
                if wanted:
                    self._report(spec, pb.OBJECT_LOST, b"",
                                 f"an argument could not be brought to {self.name}: {err}",
                                 0.0)
                    self.pump()
                return
            # The head learns of the copies even when the task was cancelled while they
            # travelled: it alone deletes them (else they stay in this store for good).
            self.copies.extend(i for i in ids if i in store)
            if wanted:
                self._accept(spec)
                self.pump()
            else:
                self.schedule_flush()

        asyncio.ensure_future(_gather(fetches)).add_done_callback(arrived)
        return False

    def _deps_for_worker(self, spec: pb.TaskSpec, task: _Task | None = None) -> dict[int, Any]:
        """Dependency values for a worker: inline bytes, or the store file to map (pinned
        in memory while `task` runs)."""
        deps: dict[int, Any] = {}
        for value in spec.dep_values:
            if value.size and self.store is not None:
                try:
                    deps[value.id] = ("path", self.store.path(value.id))
                except (KeyError, MemoryError) as err:  # gone, or no room to restore it
                    deps[value.id] = ("missing", f"argument object {value.id:#x} is not "
                                      f"available on {self.name}: {err}")
                    continue
                if task is not None:
                    self.store.pin(value.id)
                    task.pinned.append(value.id)
            else:
                deps[value.id] = value.data
        return deps

    def _on_alloc(self, worker: WorkerHandle, message: Alloc) -> None:
        from cluster.store.objectstore import StoreFullError

        ref, size = message.ref, message.size
        if self.store is None:
            worker.send(AllocReply(ref, "", "this node has no object store"))
            return
        if message.seal_id:  # a direct actor call's result, written at message.path
            self._seal_direct(worker, message)
            return
        try:
            path = self.store.alloc(size)
        except StoreFullError as err:
            worker.send(AllocReply(ref, "", f"{self.name}: {err}"))
            return
        worker.allocs.append(path)
        worker.send(AllocReply(ref, path, ""))

    def _seal_direct(self, worker: WorkerHandle, message: Alloc) -> None:
        """Seal a direct call's result under the call's id. The caller registers it with
        the head (as a put naming this node), which then refcounts and deletes it."""
        assert self.store is not None
        try:
            self.store.seal(message.seal_id, message.path)
        except (ValueError, OSError) as err:
            worker.send(AllocReply(message.ref, "", f"{self.name}: {err}", self.node_id))
            return
        if message.path in worker.allocs:
            worker.allocs.remove(message.path)
        worker.send(AllocReply(message.ref, self.store.path(message.seal_id), "",
                               self.node_id))

    def _cancel(self, task_id: int) -> None:
        if self._cancel_queued(task_id, reply=False):
            return
        for worker in self.workers:
            if worker.task is not None and (worker.task.spec.task_id == task_id or (
                    worker.stack and self.nested.holds(worker, task_id))):
                worker.kill()

    def _cancel_queued(self, task_id: int, reply: bool = True) -> bool:
        """Drop `task_id` if it has not started here (in the backlog, waiting for its
        arguments, or an actor call in its actor's queue), reporting it CANCELLED; with
        `reply`, tell the head whether it was."""
        decided = self.cancel_sent_ahead(task_id) or self.cancel_prefetched(task_id)
        if decided is not None:
            if reply:
                self._cancel_replies.append(decided)
            return decided.cancelled
        spec = self._pulling.pop(task_id, None) or self.staged.take(task_id)
        if spec is None:
            for task in self.queue:
                if task.spec.task_id == task_id:
                    self.queue.remove(task)
                    spec = task.spec
                    break
        if spec is None:
            for host in self.actors.values():
                for call in host.queue:
                    if call.task_id == task_id:
                        host.queue.remove(call)
                        spec = call
                        break
        if spec is not None:
            self._report(spec, pb.CANCELLED, b"",
                         f"cancelled on {self.name} before it started", 0.0)
        if reply:
            self._cancel_replies.append(pb.CancelReply(
                task_id=task_id, cancelled=spec is not None,
                message="" if spec is not None else f"it has started on {self.name}"))
        return spec is not None

    # ---- scheduling onto workers -------------------------------------------------------
    def _fits(self, request: dict[str, float]) -> bool:
        free = self.free
        for key, amount in request.items():
            if free.get(key, 0.0) + _EPS < amount:
                return False
        return True

    def pump(self) -> None:
        if self.stopping:
            return
        queue, idle = self.queue, self.idle
        while queue:
            task = queue[0]
            if not self._fits(task.request):
                self.prefetch()  # (busy workers may take the next ones now)
                return
            if not idle:
                # All workers busy but resources free (fractional or zero-cpu tasks, or
                # tasks blocked in a wait): a worker blocked in a wait runs it meanwhile,
                # else grow up to the cap, past it only if all wait (cluster.node.nested).
                at_cap = len(self.workers) >= self.max_workers
                waiting = self.nested.take_waiting(task, at_cap)
                if waiting is not None:
                    queue.popleft()
                    self._start(waiting, task)
                    continue
                if self._starting == 0 and (not at_cap or self.nested.may_grow_past_cap()):
                    self._spawn()
                return
            worker = idle.popleft()
            queue.popleft()
            self._start(worker, task)

    def _start(self, worker: WorkerHandle, task: _Task) -> None:
        spec = task.spec
        gpus = self._take(task)
        if spec.fn_id not in worker.functions:
            blob = self.functions.get(spec.fn_id)
            if blob is None:
                self._report(spec, pb.CANCELLED, b"",
                             "the app's function never reached this node", 0.0)
                self._release(task)
                self.idle.append(worker)
                return
            worker.send(Fn(spec.fn_id, blob))
            worker.functions.add(spec.fn_id)
        deps = self._deps_for_worker(spec, task) if spec.dep_values else {}
        stdout = (spec.stdout, spec.stdout_mode) if spec.stdout else None
        stderr = (spec.stderr, spec.stderr_mode) if spec.stderr else None
        worker.task = task
        worker.timed_out = False
        task.started = time.perf_counter()
        env = dict(spec.env) if spec.env else None
        if spec.ranks_per_node > 1 and spec.kind == pb.BASH and \
                not (env and "CLUSTER_MPI_PREFIX" in env):  # one node: not set by the head
            env = {**(env or {}), **one_node_mpi_env(self.name, spec.ranks_per_node)}
        worker.send(Run(spec.task_id, spec.fn_id, spec.kind, spec.name,
                        spec.args_ref or spec.args, deps, gpus, stdout, stderr, spec.cwd, env))
        if spec.walltime > 0:
            loop = self.loop or asyncio.get_event_loop()
            task.timer = loop.call_later(spec.walltime, self._walltime, worker, task)
        if not worker.stack and spec.kind == PYTHON:  # (its worker may run what follows)
            worker.anchor = spec.task_id
            if self.staged.behind:
                self.presend(worker)
            self.may_prefetch_to(worker)

    def _walltime(self, worker: WorkerHandle, task: _Task) -> None:
        if worker.task is task:
            worker.timed_out = True
            worker.kill()
        elif task in worker.stack:  # it waits, running another task (cluster.node.nested)
            self.nested.expired.add(task.spec.task_id)
            worker.kill()

    def _take(self, task: _Task) -> str | None:
        """Take the task's resources from the node's free ones, GPUs by id; returns its
        CUDA_VISIBLE_DEVICES (None without GPUs). :meth:`_release` gives them back."""
        free = self.free
        for key, amount in task.request.items():
            free[key] = free.get(key, 0.0) - amount
        # A fractional GPU request still needs a whole device to run on.
        want = int(task.request.get("gpus", 0) + 0.999)
        if not want:
            return None
        task.gpu_ids = [self.free_gpus.pop(0) for _ in range(min(want, len(self.free_gpus)))]
        return ",".join(task.gpu_ids)

    def _release(self, task: _Task) -> None:
        """Give back what :meth:`_take` took, and end the task's timer and pins."""
        free = self.free
        for key, amount in task.request.items():
            free[key] = free.get(key, 0.0) + amount
        if task.gpu_ids:
            self.free_gpus.extend(task.gpu_ids)
            task.gpu_ids = []
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        if task.pinned and self.store is not None:
            for object_id in task.pinned:
                self.store.unpin(object_id)
            task.pinned = []

    # ---- from workers ----------------------------------------------------------------
    def _on_worker_message(self, worker: WorkerHandle, message: Any) -> None:
        kind = type(message)
        if kind is Done:
            if worker.stack:  # a task it ran while another one waited
                task = self.nested.finished(worker, message.task_id)
            else:
                task = worker.task
                worker.task = None
            if task is not None:
                self._release(task)
                self.note_run(task.spec.fn_id, message.seconds)
                if not (self.stopping and message.status != pb.OK):  # (killed by the stop)
                    self._report(task.spec, message.status, message.data, message.message,
                                 message.seconds, worker=worker)
            self.done += 1
            self.start_prefetched(worker)  # (if it has one, it has started it already)
            if not worker.closing and worker.task is None:
                self.idle.append(worker)
                if len(self.workers) > self.num_workers:  # an extra one (cluster.node.nested)
                    self.nested.retire_later(worker)
            self.pump()
            if self._flush_timer is not None:  # (less waits here: still enough?)
                self.schedule_flush()
        elif kind is Log:
            self._logs.append(pb.LogLine(task_id=message.task_id, name=message.name,
                                         node=self.name, text=message.text,
                                         stderr=message.is_stderr))
            self.schedule_flush()
        elif kind is Ready:
            self._starting -= 1
            worker.ready = True
            self.idle.append(worker)
            self.pump()
        elif kind is Call:
            self._worker_call(worker, message)
        elif kind is Alloc:
            self._on_alloc(worker, message)
        elif kind is HandBack:
            self.requeue_prefetched(worker, message.task_ids)
        elif kind in NESTED_TYPES:
            self.nested.on_worker_message(worker, message)

    def _on_worker_lost(self, worker: WorkerHandle) -> None:
        self.forget_presented(worker)
        self.requeue_prefetched(worker)
        if worker in self.workers:
            self.workers.remove(worker)
        if worker in self.idle:
            self.idle.remove(worker)
        if not worker.ready:
            self._starting -= 1
        if self.store is not None:
            for path in worker.allocs:
                self.store.abort(path)  # a result it was writing
            worker.allocs.clear()
        stacked = self.nested.lost(worker) if worker.stack or worker.channel else []
        for under in stacked:  # tasks that waited in it, under the one it ran
            self._release(under)
            self._report(under.spec, *self.nested.lost_status(under, worker, self.name),
                         time.perf_counter() - under.started)
        task = worker.task
        worker.task = None
        if task is not None and self.stopping:
            self._release(task)  # (a planned stop: the head re-runs it elsewhere)
        elif task is not None:
            self._release(task)
            code = worker.proc.returncode if worker.proc is not None else None
            if worker.timed_out:
                self._report(task.spec, pb.TIMEOUT, b"",
                             f"walltime of {task.spec.walltime:g}s exceeded; the app was killed",
                             time.perf_counter() - task.started)
            else:
                args = (task.spec, pb.WORKER_CRASHED, b"", f"worker process {worker.pid} on "
                        f"{self.name} died (exit code {code}) while running the task",
                        time.perf_counter() - task.started)
                # SIGTERM from outside: Slurm ending the job step (walltime, scancel) signals
                # every process, and our own stop may follow a moment later: the head then
                # re-runs the task without using up a retry, so wait for that moment.
                delay = 1.0 if code == -signal.SIGTERM else 0.0

                def report_unless_stopping() -> None:
                    if not self.stopping:
                        self._report(*args, worker=worker)
                        self.pump()  # (a task staged behind it is sent back: see _report)

                (self.loop or asyncio.get_event_loop()).call_later(delay, report_unless_stopping)
        if not self.stopping:
            if len(self.workers) < self.num_workers:
                self._spawn()
            self.pump()

    # ---- to the head -----------------------------------------------------------------
    def _report(self, spec: pb.TaskSpec, status: pb.Status, data: Any, message: str,
                seconds: float, route: str = "", worker: WorkerHandle | None = None) -> None:
        killed = self.staged.kill_on_start
        if killed and spec.task_id in killed:  # cancelled once sent ahead (cluster.node.staged)
            killed.discard(spec.task_id)
            status, data, message = pb.CANCELLED, b"", f"cancelled on {self.name} as it started"
        result = pb.TaskResult(task_id=spec.task_id, status=status, node=self.name,
                               attempt=spec.attempt, run_seconds=seconds, message=message,
                               route=route, worker_pid=worker.pid if worker is not None else 0)
        if isinstance(data, tuple):  # ("inline", bytes, refs) or ("stored", path, size, refs)
            if data[0] == "stored":
                _, path, size, nested = data
                if worker is not None and path in worker.allocs:
                    worker.allocs.remove(path)
                assert self.store is not None
                self.store.seal(spec.task_id, path)
                result.size = size
                if spec.kind == pb.ACTOR_CALL:
                    # The head names a task's node as its result's holder; for actor
                    # calls it may not know the node (the driver then asks for it).
                    result.holders.append(self.node_id)
            else:
                _, result.data, nested = data
            result.nested.extend(nested)
        else:
            result.data = data
        self._results.append(result)
        staged = self.staged
        staged.live.discard(spec.task_id)
        if staged.behind or (worker is not None and worker.presented):
            self.heirs_after(result, worker, data)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Send what was gathered for the head at the end of this loop turn, or, while
        enough work waits here, a moment later with the next results."""
        loop = self.loop or asyncio.get_event_loop()
        low = max(1, LOW_WATER_PER_WORKER * len(self.workers))
        # Staged and prefetched tasks count as waiting work: they start without the head.
        waiting = len(self.queue) + len(self.staged.behind) + self.prefetched_count
        if self._flush_pending:
            if self._flush_timer is not None and waiting < low:
                # Running low: the head's answer (more work) must be on its way before
                # the queue is empty, so the held results go now.
                self._flush_timer.cancel()
                self._flush_timer = None
                loop.call_soon(self._flush)
            return
        self._flush_pending = True
        if waiting >= low:
            # Work is waiting here, so nothing the head could send changes what runs
            # next: gather the results of the next moment into one message. Sent at
            # once, no-op results went 1.3 per message, each costing the head ~150 us
            # over gRPC. An idle node still answers at once (round trips unchanged).
            self._flush_timer = loop.call_later(RESULT_BATCH_SECONDS, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._flush_timer = None
        if not (self._results or self._logs or self._events or self._submits or
                self.copies or self._cancel_replies or self.nested.pending()) or \
                self.link is None:
            return
        message = pb.NodeToHead(results=self._results, logs=self._logs,
                                actor_events=self._events, submit=self._submits,
                                copies=self.copies)
        if self._cancel_replies:  # after the results: a dropped task's CANCELLED first
            message.cancel_replies.extend(self._cancel_replies)
            self._cancel_replies = []
        if self.nested.pending():
            for key, items in self.nested.take().items():
                getattr(message, key).extend(items)
        self._results, self._logs, self._events, self._submits = [], [], [], []
        self.copies = []
        self.link.send(message)

    def heartbeat(self) -> pb.Heartbeat:
        """Current load, for the head's node table."""
        beat = pb.Heartbeat(prefetched=self.prefetched_total)
        beat.running, beat.queued, beat.workers = self.stats()
        if self.store is not None:
            stats = self.store.stats()
            beat.store.objects, beat.store.bytes = stats["objects"], stats["bytes"]
            beat.store.spilled, beat.store.capacity = stats["spilled"], stats["capacity"]
        return beat


def _priority_of(task: _Task) -> int:
    return task.spec.priority


async def _gather(futures: list[asyncio.Future[Any]]) -> None:
    await asyncio.gather(*futures)
