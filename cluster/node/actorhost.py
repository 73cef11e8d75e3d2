"""The daemon's actors: each lives in a dedicated worker of the node (its creation holds
the node's resources while it lives), its calls queued here up to its ``max_concurrency``.

:class:`ActorHosting` is a part of :class:`cluster.node.daemon.Daemon` (a mixin: the same
object, split out so neither file grows past the layout test's cap); apps on this node
that call actors go through the head from here too (:meth:`ActorHosting._worker_call`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.common.ids import DRIVER_SHIFT, NODE_CALLER_BASE
from cluster.common.messages import ActorCall, ActorCreate, Call, Created, Done, Fn, Ready
from cluster.common.protocol import pb
from cluster.node.workerpool import WorkerHandle


@dataclass
class ActorHost:
    """An actor living in a dedicated worker of this daemon."""

    actor_id: int
    create: Any  # the daemon's record of the creation task
    worker: WorkerHandle
    max_concurrency: int
    queue: deque[pb.TaskSpec] = field(default_factory=deque)
    inflight: dict[int, pb.TaskSpec] = field(default_factory=dict)
    ready: bool = False
    killed: bool = False


class ActorHosting:
    """The daemon's actor methods (see the module docstring); state lives on the daemon."""

    # Set by the daemon (declared for readers and type checkers).
    actors: dict[int, ActorHost]
    functions: Any
    secret: bytes
    runtime_dir: str
    address: str
    name: str
    node_id: int
    store: Any
    stopping: bool
    _env: Any
    _events: list[pb.ActorEvent]
    _submits: list[pb.TaskSpec]
    _call_seq: int
    _call_waiters: dict[int, Any]

    if TYPE_CHECKING:  # the daemon's methods these call (defined in cluster/node/daemon.py)
        def _take(self, task: Any) -> str | None: ...
        def _release(self, task: Any) -> None: ...
        def _report(self, spec: pb.TaskSpec, status: pb.Status, data: Any, message: str,
                    seconds: float, route: str = "",
                    worker: WorkerHandle | None = None) -> None: ...
        def _deps_for_worker(self, spec: pb.TaskSpec, task: Any = None) -> dict[int, Any]: ...
        def _on_worker_message(self, worker: WorkerHandle, message: Any) -> None: ...
        def schedule_flush(self) -> None: ...

    # ---- actors ------------------------------------------------------------------------
    def _create_actor(self, task: Any) -> None:
        spec = task.spec
        self._take(task)
        task.started = time.perf_counter()
        host: ActorHost | None = None

        def on_message(worker: WorkerHandle, message: Any) -> None:
            assert host is not None
            self._on_actor_message(host, message)

        def on_lost(worker: WorkerHandle) -> None:
            assert host is not None
            self._on_actor_lost(host)

        worker = WorkerHandle(-1, on_message, on_lost)
        host = ActorHost(spec.task_id, task, worker, max(1, spec.actor.max_concurrency or 1))
        self.actors[spec.task_id] = host
        asyncio.ensure_future(self._start_actor_worker(host))

    async def _start_actor_worker(self, host: ActorHost) -> None:
        try:
            await host.worker.start(self._env)
        except Exception as err:  # noqa: BLE001
            self.actors.pop(host.actor_id, None)
            self._release(host.create)
            self._report(host.create.spec, pb.WORKER_CRASHED, b"",
                         f"could not start the actor's worker: {err}", 0.0)

    def _pump_actor(self, host: ActorHost) -> None:
        if not host.ready or host.killed:
            return
        while host.queue and len(host.inflight) < host.max_concurrency:
            spec = host.queue.popleft()
            host.inflight[spec.task_id] = spec
            deps = self._deps_for_worker(spec) if spec.dep_values else {}
            host.worker.send(ActorCall(spec.task_id, spec.method, spec.args, deps))

    def _on_actor_message(self, host: ActorHost, message: Any) -> None:
        kind = type(message)
        if kind is Ready:
            spec = host.create.spec
            gpus = ",".join(host.create.gpu_ids) if host.create.gpu_ids else None
            host.worker.send(Fn(spec.fn_id, self.functions.get(spec.fn_id, b"")))
            deps = self._deps_for_worker(spec) if spec.dep_values else {}
            host.worker.send(ActorCreate(spec.task_id, spec.fn_id, spec.name, spec.args,
                                         deps, gpus, spec.cwd,
                                         dict(spec.env) if spec.env else None,
                                         host.max_concurrency, self.secret, self.runtime_dir,
                                         self.address))
        elif kind is Created:
            self._report(host.create.spec, message.status, message.data, message.message,
                         message.seconds, message.route)
            if message.status == pb.OK:
                host.ready = True
                self._pump_actor(host)
            else:
                self.actors.pop(host.actor_id, None)
                host.killed = True
                host.worker.stop()
                self._release(host.create)
        elif kind is Done:
            spec = host.inflight.pop(message.task_id, None)
            if spec is not None:  # (a stored result is sealed like a task's)
                self._report(spec, message.status, message.data, message.message,
                             message.seconds, worker=host.worker)
            self._pump_actor(host)
        else:
            self._on_worker_message(host.worker, message)

    def _on_actor_lost(self, host: ActorHost) -> None:
        if self.store is not None and not self.stopping:
            for path in host.worker.allocs:
                self.store.abort(path)  # a large result it was writing
            host.worker.allocs.clear()
        if host.killed or self.stopping:
            return
        self.actors.pop(host.actor_id, None)
        self._release(host.create)
        code = host.worker.proc.returncode if host.worker.proc is not None else None
        message = f"its worker process {host.worker.pid} on {self.name} died (exit code {code})"
        if not host.ready:
            self._report(host.create.spec, pb.WORKER_CRASHED, b"", message, 0.0)
            return
        self._events.append(pb.ActorEvent(actor_id=host.actor_id, died=True, message=message))
        self.schedule_flush()

    def _worker_call(self, worker: WorkerHandle, message: Call) -> None:
        """An app on this node called an actor: forward the call to the head."""
        self._call_seq += 1
        task_id = ((NODE_CALLER_BASE + self.node_id) << DRIVER_SHIFT) | self._call_seq
        self._call_waiters[task_id] = (worker, message.ref)
        self._submits.append(pb.TaskSpec(task_id=task_id, kind=pb.ACTOR_CALL,
                                         actor_id=message.actor_id, method=message.method,
                                         name=message.method, args=message.args,
                                         deps=message.deps))
        self.schedule_flush()
