"""A worker the driver leases for its one-at-a-time tasks (as Ray's worker leases).

A driver that submits a task, waits for it, and submits the next (a sync round trip) pays
four socket hops through the head and its daemon: driver -> head -> worker -> head ->
driver, each waking a process (~300 us on the local lane). After a few such round trips
in a row the driver leases a worker: an actor (named ``TaskLease`` in the dashboard; it
holds no CPU on the head's books, see :data:`HELD`) whose worker takes plain tasks over
the direct-call socket actor calls already use (:mod:`cluster.worker.actorserver`): two
hops instead of four (~100 us, as a direct actor call).

Which tasks go to the lease (:func:`eligible`): Python apps with the default resources (one
CPU), no future or ref arguments, no retries, walltime, retry handler or extra
environment. Everything else, and every task submitted while another is in flight, goes
through the head as before: bursts spread over the cluster's workers, and the head places
what needs placing. The lease is given back (the actor killed) as soon as the driver
submits a second task while one is in flight (a burst begins), and after
:data:`IDLE_SECONDS` without use, so an idle driver keeps no worker.

The head never sees a leased task: its result resolves the future here, and, as for a
direct actor call, the head is told the value only when a task submitted through it
depends on it (:meth:`api._client.Client.track_local`). A large result stays in the leased
worker's node store and is registered with the head as a put. A leased worker that dies
fails its task with WorkerCrashedError (such tasks have no retries); ``cancel(force=True)``
kills it, a plain ``cancel()`` of a running task returns False, as through the head.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from api._direct import CallConn, connect, resolve_stored
from cluster.common import serialization, status
from cluster.common.messages import DirectReply, DirectTask
from cluster.common.protocol import pb

#: Sync round trips in a row before the driver leases a worker: one alone does not pay
#: for starting an actor (a fork and two messages), a loop does.
START_STREAK = 3

#: A lease unused this long is given back (its actor killed, its worker gone).
IDLE_SECONDS = 1.0

#: The resources of a task the lease runs: python_app's defaults (one CPU).
LEASED = pb.Resources(cpus=1.0)

#: What the lease's actor holds on the head's books: nothing. Holding the task's CPU
#: deadlocked a leased task that waits for tasks it submitted on a one-CPU cluster (its
#: children queued behind the CPU it held; a task through the head gives its CPUs back
#: while it waits, an actor cannot). The cost: while a driver's one-at-a-time task runs
#: leased, the head may run one more task than there are CPUs (at most one per driver).
HELD = pb.Resources()

_CLASS_BLOB = serialization.dumps_function(object)  # the actor holds no state of its own


def eligible(spec: pb.TaskSpec) -> bool:
    """Whether a task may run on the driver's leased worker: a Python app needing exactly
    what the lease holds and nothing the head must do for it (resolve arguments, retry,
    enforce a walltime, set an environment).

    >>> eligible(pb.TaskSpec(kind=pb.PYTHON, resources=LEASED))
    True
    >>> eligible(pb.TaskSpec(kind=pb.PYTHON, resources=LEASED, deps=[7]))
    False
    >>> eligible(pb.TaskSpec(kind=pb.PYTHON, resources=pb.Resources(cpus=2.0)))
    False
    >>> eligible(pb.TaskSpec(kind=pb.BASH, resources=LEASED))
    False
    """
    return (spec.kind == pb.PYTHON and not spec.deps and not spec.args_ref
            and not spec.max_retries and not spec.walltime and not spec.retry_handler
            and spec.num_nodes <= 1 and not spec.env and not spec.parent_task
            and spec.resources == LEASED)


def decide(quiet: bool, fits: bool, ready: bool, busy: bool, streak: int) -> str:
    """What the driver does with one submission: ``"direct"`` (send it to the leased
    worker), ``"start"`` (send it through the head and lease a worker for the next ones),
    ``"release"`` (through the head, and give the lease back: a burst begins) or
    ``"head"``. `quiet`: nothing else of the driver's is in flight; `fits`: the task is
    :func:`eligible`; `ready`: a lease is connected, `busy`: it runs a task; `streak`:
    quiet eligible submissions in a row before this one.

    >>> decide(quiet=True, fits=True, ready=True, busy=False, streak=9)
    'direct'
    >>> decide(quiet=True, fits=True, ready=False, busy=False, streak=START_STREAK - 1)
    'start'
    >>> decide(quiet=True, fits=True, ready=False, busy=False, streak=0)
    'head'
    >>> decide(quiet=True, fits=True, ready=True, busy=True, streak=9)   # a second at once
    'release'
    >>> decide(quiet=False, fits=True, ready=True, busy=False, streak=9)
    'release'
    >>> decide(quiet=True, fits=False, ready=True, busy=False, streak=9)  # e.g. a bash app
    'head'
    """
    if not quiet or busy:
        return "release"
    if not fits:
        return "head"
    if ready:
        return "direct"
    return "start" if streak + 1 >= START_STREAK else "head"


class TaskLease:
    """The driver's leased worker (at most one), and the task it runs.

    `client` is the driver's :class:`api._client.Client`; `resolve(future, status, data,
    message, name)` completes a future as a result from the head would."""

    def __init__(self, client: Any, resolve: Callable[..., None]) -> None:
        self._client = client
        self._resolve = resolve
        self._lock = threading.Lock()
        self.actor_id = 0              # the lease's actor (0: none)
        self._creating = False         # its creation is in flight through the head
        self._conn: CallConn | None = None
        self._busy: tuple[pb.TaskSpec, bytes, Any] | None = None
        self._release_after = False    # give the lease back once the busy task ends
        self._sent: set[bytes] = set()  # function ids the leased worker holds
        self._streak = 0
        self._last_used = 0.0
        self._disabled = False         # a lease could not be reached: stop trying
        #: Tasks sent to leased workers (for tests and the benchmark's curiosity).
        self.sent = 0

    @property
    def ready(self) -> bool:
        """A leased worker is connected (the next quiet eligible task goes to it)."""
        return self._conn is not None

    # ---- submitting ----------------------------------------------------------------------
    def offer(self, spec: pb.TaskSpec, fn_blob: bytes, future: Any) -> bool:
        """Send `spec` to the leased worker if it should go there; False: the caller sends
        it through the head (and this may have begun leasing a worker or giving one
        back). Called outside the client's lock (this takes it to start a lease)."""
        others = max(0, self._client.tasks_in_flight() - self._creating)
        if not self.actor_id and (others or self._disabled):
            self._streak = 0  # (the burst path: no lock taken)
            return False
        start = None
        conn: CallConn | None = None
        with self._lock:
            fits = eligible(spec)
            action = decide(others == 0, fits, self._conn is not None,
                            self._busy is not None, self._streak)
            if action == "direct":
                conn = self._conn
                self._busy = (spec, fn_blob, future)
                blob = b"" if spec.fn_id in self._sent else fn_blob
                self._sent.add(spec.fn_id)
                self._last_used = time.monotonic()
            else:
                self._streak = self._streak + 1 if action in ("start", "head") and fits else 0
                if action == "start" and not self.actor_id:
                    start = self._start()
                elif action == "release" and self.actor_id:
                    if self._busy is not None:
                        self._release_after = True
                    else:
                        self._give_back()
        if start is not None:
            self._client.submit(*start)
            return False
        if conn is None:
            return False
        if conn.send(DirectTask(spec.task_id, spec.fn_id, blob, spec.name, spec.args,
                                spec.cwd)):
            # Tracked once sent: a dependent submitted through the head makes the head
            # learn its value (the future reaches the caller only after this returns).
            self._client.track_local(future)
            self.sent += 1
            return True
        with self._lock:  # the connection broke just now: through the head after all
            if self._busy is not None and self._busy[2] is future:
                self._busy = None
            self._sent.clear()
        return False

    def cancel(self, task_id: int, force: bool) -> bool | None:
        """Cancel a task running on the leased worker: with `force` its worker is killed
        (True); without, a running task is not stopped (False). None: not a leased task."""
        with self._lock:
            busy = self._busy
            if busy is None or busy[0].task_id != task_id:
                return None
            if not force:
                return False
            self._busy = None
            self._give_back()
        busy[2].mark_cancelled()
        return True

    # ---- the lease's life ------------------------------------------------------------------
    def _start(self) -> tuple[pb.TaskSpec, bytes, Any]:
        """Begin leasing: the submission of the lease's actor (called with the lock
        held; the caller submits it once the lock is let go)."""
        from api._futures import AppFuture

        client = self._client
        actor_id = client.new_id()
        spec = pb.TaskSpec(
            task_id=actor_id, kind=pb.ACTOR_CREATE, fn_id=b"shoal-task-lease",
            name="TaskLease", args=serialization.dumps_value(((), {})), resources=HELD,
            cwd=client.cwd, actor=pb.ActorOptions(class_name="TaskLease", max_concurrency=1))
        self.actor_id, self._creating = actor_id, True
        ready = AppFuture(actor_id, "TaskLease.__init__", client)
        # (on the thread that delivers the result, which must not block: connect elsewhere)
        ready.when_done(lambda fut: threading.Thread(
            target=self._connect, args=(fut,), name="shoal-lease-connect", daemon=True).start())
        client.direct.learn(actor_id, "", 0)
        return spec, _CLASS_BLOB, ready

    def _connect(self, created: Any) -> None:
        """The lease's actor exists (or failed to): open the direct connection."""
        actor_id = created.task_id
        with self._lock:
            if actor_id != self.actor_id:
                return  # given back meanwhile
            self._creating = False
        route = self._client.direct.route_for(actor_id).route \
            if created.exception() is None else ""
        sock = connect(route, self._client.secret) if route else None
        with self._lock:
            if actor_id != self.actor_id:
                if sock is not None:
                    sock.close()
                return
            if sock is None:  # e.g. a --tls cluster seen from another host
                self._disabled = True
                self._give_back()
                return
            conn = CallConn(sock, self._on_reply, lambda: self._on_lost(actor_id))
            self._conn = conn
            self._sent.clear()
            self._last_used = time.monotonic()
        threading.Thread(target=self._reap, args=(actor_id,), name="shoal-lease-idle",
                         daemon=True).start()

    def _reap(self, actor_id: int) -> None:
        """Give the lease back once it has been idle for IDLE_SECONDS."""
        while True:
            time.sleep(IDLE_SECONDS / 4)
            with self._lock:
                if actor_id != self.actor_id:
                    return
                if self._busy is None and time.monotonic() - self._last_used > IDLE_SECONDS:
                    self._give_back()
                    return

    def _give_back(self) -> None:
        """Kill the lease's actor (called with the lock held; nothing is waited for)."""
        actor_id, conn = self.actor_id, self._conn
        self.actor_id, self._creating, self._conn = 0, False, None
        self._release_after = False
        self._streak = 0
        if not actor_id:
            return
        client = self._client
        if client.connected:
            client.kill_actor(actor_id)
        client.direct.forget(actor_id)
        if conn is not None:
            conn.close()

    def release(self) -> None:
        """Give the lease back now (once its running task, if any, ends)."""
        with self._lock:
            if self._busy is not None:
                self._release_after = True
            else:
                self._give_back()

    def close(self) -> None:
        """The session ends (the head kills the driver's actors as it leaves)."""
        with self._lock:
            conn, self._conn, self.actor_id = self._conn, None, 0
        if conn is not None:
            conn.close()

    # ---- answers ---------------------------------------------------------------------------
    def _on_reply(self, reply: Any) -> None:
        if type(reply) is not DirectReply:
            return  # Denied: the reader ends and _on_lost handles it
        with self._lock:
            busy = self._busy
            if busy is None or busy[0].task_id != reply.call_id:
                return
            self._busy = None  # (before the future resolves: its waiter may submit again)
            self._last_used = time.monotonic()
            if self._release_after:
                self._give_back()
        spec, _, future = busy
        data = reply.data
        if type(data) is tuple:
            resolve_stored(self._client, spec.task_id, future, spec.name, data, self._resolve)
        else:
            self._resolve(future, reply.status, data, reply.message, spec.name)

    def _on_lost(self, actor_id: int) -> None:
        """The leased worker's connection ended: given back, killed for a cancel, or the
        worker died under its task."""
        with self._lock:
            busy = None
            if actor_id == self.actor_id:
                busy, self._busy = self._busy, None
                self._give_back()
        if busy is not None:
            spec, _, future = busy
            self._resolve(future, status.WORKER_CRASHED, b"",
                          f"the worker running {spec.name!r} (leased by this driver for its "
                          "one-at-a-time tasks) died", spec.name)
