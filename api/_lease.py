"""A worker the driver leases for its one-at-a-time tasks (as Ray's worker leases).

A driver that submits a task, waits for it, and submits the next (a sync round trip) pays
four socket hops through the head and its daemon: driver -> head -> worker -> head ->
driver, each waking a process (~300 us on the local lane). After a few such round trips
in a row the driver leases a worker: an actor (named ``TaskLease`` in the dashboard; it
holds one CPU, see :data:`HELD`) whose worker takes plain tasks over
the direct-call socket actor calls already use (:mod:`cluster.worker.actorserver`): two
hops instead of four (~100 us, as a direct actor call).

Which tasks go to the lease (:func:`eligible`): Python apps with the default resources (one
CPU), no future or ref arguments, no retries, walltime, retry handler or extra
environment. Everything else, and every task submitted while another is in flight, goes
through the head as before: bursts spread over the cluster's workers, and the head places
what needs placing. The leased worker holds its CPU only while it runs a task (see
:data:`HELD`); the lease is given back (the actor killed) after :data:`IDLE_SECONDS`
without use.

The head never runs a leased task: its driver reports it afterwards, for the history and
the status counts (one still running after :data:`RUNNING_REPORT` too). Its result
resolves the future here and, as for a direct actor call, the head is told the value
only when a task submitted through it depends on it
(:meth:`api._client.Client.track_local`). A large result stays in the leased
worker's node store and is registered with the head as a put. A leased worker that dies
fails its task with WorkerCrashedError (such tasks have no retries); ``cancel(force=True)``
kills it, a plain ``cancel()`` of a running task returns False, as through the head.

``SHOAL_LEASE=0`` in the driver's environment turns leases off: every task then goes
through the head.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from api._direct import CallConn, connect, resolve_direct
from cluster.common import serialization, status
from cluster.common.messages import DirectAck, DirectReply, DirectTask
from cluster.common.protocol import pb

#: Sync round trips in a row before the driver leases a worker: one alone does not pay
#: for starting an actor (a fork and two messages), a loop does.
START_STREAK = 3

#: A lease unused this long is given back (its actor killed, its worker's memory free).
IDLE_SECONDS = 2.0

#: A leased task running this long is reported to the head as running (shorter ones are
#: reported once, when they end: a sync loop adds no message a task).
RUNNING_REPORT = 0.1

#: The resources of a task the lease runs: python_app's defaults (one CPU).
LEASED = pb.Resources(cpus=1.0)

#: What the lease's actor holds on the head's books: the CPU its task needs, as through
#: the head, and only while it runs a task. The leased worker gives it back when it has
#: been idle for 5 ms (cluster.worker.worker.LEASE_IDLE_SECONDS), and while its task
#: waits for tasks it submitted, as any task does: held between tasks it kept a burst's
#: tasks from a CPU, and deadlocked a parent waiting for its child on a one-CPU node.
HELD = LEASED

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


def decide(quiet: bool, fits: bool, leased: bool, ready: bool, busy: bool,
           streak: int) -> str:
    """What the driver does with one submission: ``"direct"`` (send it to the leased
    worker), ``"start"`` (lease a worker and send it there once connected) or ``"head"``.
    `quiet`: nothing else of the driver's is in flight; `fits`: the task is
    :func:`eligible`; `leased`: a lease exists or is being made, `ready`: it is connected,
    `busy`: a task runs on it (or waits for it); `streak`: quiet eligible submissions in a
    row before this one.

    >>> decide(quiet=True, fits=True, leased=True, ready=True, busy=False, streak=9)
    'direct'
    >>> decide(quiet=True, fits=True, leased=False, ready=False, busy=False,
    ...        streak=START_STREAK - 1)
    'start'
    >>> decide(quiet=True, fits=True, leased=False, ready=False, busy=False, streak=0)
    'head'
    >>> decide(quiet=True, fits=True, leased=True, ready=True, busy=True, streak=9)
    'head'
    >>> decide(quiet=False, fits=True, leased=True, ready=True, busy=False, streak=9)
    'head'
    >>> decide(quiet=True, fits=False, leased=True, ready=True, busy=False, streak=9)
    'head'
    """
    if not quiet or not fits or busy:
        return "head"
    if ready:
        return "direct"
    if leased:  # being made: the task that began it waits for it
        return "head"
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
        #: The task running leased: (spec, function blob, future, wall-clock send time,
        #: the lease's actor id).
        self._busy: tuple[pb.TaskSpec, bytes, Any, float, int] | None = None
        #: The task that started the lease, sent once it is connected: (spec, blob, future).
        self._held: tuple[pb.TaskSpec, bytes, Any] | None = None
        self._reported = 0  # the busy task reported as running (see running_report)
        self._release_after = False    # give the lease back once the busy task ends
        self._sent: set[bytes] = set()  # function ids the leased worker holds
        self._streak = 0
        self._last_used = 0.0
        # A lease could not be reached (stop trying), or SHOAL_LEASE=0 turned leases off.
        self._disabled = os.environ.get("SHOAL_LEASE", "1") == "0"
        #: Tasks sent to leased workers (for tests and the benchmark's curiosity).
        self.sent = 0

    @property
    def ready(self) -> bool:
        """A leased worker is connected (the next quiet eligible task goes to it)."""
        return self._conn is not None

    # ---- submitting ----------------------------------------------------------------------
    def offer(self, spec: pb.TaskSpec, fn_blob: bytes, future: Any) -> bool:
        """Take `spec` for the leased worker if it should go there (sent now, or once a
        lease being made is connected); False: the caller sends it through the head.
        Called outside the client's lock."""
        others = max(0, self._client.tasks_in_flight() - self._creating)
        if not self.actor_id and (others or self._disabled):
            self._streak = 0  # (the burst path: no lock taken)
            return False
        start = None
        send = None
        with self._lock:
            fits = eligible(spec)
            action = decide(others == 0, fits, bool(self.actor_id), self._conn is not None,
                            self._busy is not None or self._held is not None, self._streak)
            self._streak = self._streak + 1 if others == 0 and fits else 0
            if action == "direct":
                send = self._take(spec, fn_blob, future)
            elif action == "start":
                self._held = (spec, fn_blob, future)
                start = self._start()
        if start is not None:
            self._client.track_local(future)  # (a dependent waits for it in the driver)
            self._client.submit(*start)
            return True
        if send is None:
            return False
        if self._send(send):
            self._client.track_local(future)  # (the caller gets the future after this)
            return True
        return False

    def _take(self, spec: pb.TaskSpec, fn_blob: bytes, future: Any) -> tuple[Any, ...]:
        """Make `spec` the busy task (called with the lock held); what _send sends."""
        self._busy = (spec, fn_blob, future, time.time(), self.actor_id)
        blob = b"" if spec.fn_id in self._sent else fn_blob
        self._sent.add(spec.fn_id)
        self._last_used = time.monotonic()
        return self._conn, DirectTask(spec.task_id, spec.fn_id, blob, spec.name, spec.args,
                                      spec.cwd), future

    def _send(self, send: tuple[Any, ...]) -> bool:
        """Send a task made busy by _take; False if the connection broke (the task is
        then no longer busy: the caller sends it through the head)."""
        conn, message, future = send
        # Counted before the write: the task can end, and its caller read `sent`, before
        # conn.send returns (a test saw one task too many that way, on a loaded machine).
        self.sent += 1
        if conn.send(message):
            return True
        self.sent -= 1
        with self._lock:
            if self._busy is not None and self._busy[2] is future:
                self._busy = None
            self._sent.clear()
        return False

    def _via_head(self, held: tuple[pb.TaskSpec, bytes, Any]) -> None:
        """Send a task this held (or failed to send) through the head after all, on a
        thread of its own (callers hold locks; a submission may block on the socket)."""
        spec, fn_blob, future = held
        if future.done():
            return  # cancelled while held

        def submit() -> None:
            try:
                self._client.submit(spec, fn_blob, future, local=True)
            except Exception as err:  # noqa: BLE001 - e.g. the session ended meanwhile
                if not future.done():
                    future.set_exception(err)

        threading.Thread(target=submit, name="shoal-lease-fallback", daemon=True).start()

    def cancel(self, task_id: int, force: bool) -> bool | None:
        """Cancel a task of the lease: one waiting for the lease to connect is dropped
        (True); a running one is stopped with `force` by killing its worker (True), and
        not without (False), as through the head. None: not a task of the lease."""
        with self._lock:
            held, busy = self._held, self._busy
            if held is not None and held[0].task_id == task_id:
                self._held = None
                future = held[2]
            elif busy is not None and busy[0].task_id == task_id:
                if not force:
                    return False
                self._busy = None
                self._give_back()
                future = busy[2]
            else:
                return None
        future.mark_cancelled()
        if busy is not None and future is busy[2]:
            self._report(busy, status.CANCELLED, b"",
                         "cancelled (force): its leased worker killed")
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
            held, self._held = self._held, None
            send = self._take(*held) if held is not None else None
        threading.Thread(target=self._reap, args=(actor_id,), name="shoal-lease-idle",
                         daemon=True).start()
        if send is not None and not self._send(send):
            assert held is not None
            self._via_head(held)

    def _reap(self, actor_id: int) -> None:
        """Give the lease back once it has been idle for IDLE_SECONDS."""
        while True:
            time.sleep(min(0.25, IDLE_SECONDS / 4))  # (IDLE_SECONDS may change meanwhile)
            with self._lock:
                if actor_id != self.actor_id:
                    return
                if self._busy is None and time.monotonic() - self._last_used > IDLE_SECONDS:
                    self._give_back()
                    return

    def _give_back(self) -> None:
        """Kill the lease's actor (called with the lock held; nothing is waited for); a
        task held for it goes through the head."""
        actor_id, conn = self.actor_id, self._conn
        self.actor_id, self._creating, self._conn = 0, False, None
        self._release_after = False
        self._streak = 0
        if self._held is not None:
            held, self._held = self._held, None
            self._via_head(held)
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
        spec, future = busy[0], busy[2]
        data = reply.data
        if type(data) is tuple:
            conn = self._conn
            resolve_direct(self._client, spec.task_id, future, spec.name, data, self._resolve,
                           lambda: conn is not None and conn.send(DirectAck(spec.task_id)))
        else:
            self._resolve(future, reply.status, data, reply.message, spec.name)
        self._report(busy, reply.status, b"" if type(data) is tuple else data, reply.message)

    def running_report(self) -> pb.LeasedTask | None:
        """The record of the task running leased, once, if it has run for RUNNING_REPORT
        seconds (the client adds it to its next batch, or the transport's idle flush,
        within 0.2 s), so the head's status counts it while it runs; None otherwise."""
        busy = self._busy
        if busy is None or busy[0].task_id == self._reported or \
                time.time() - busy[3] < RUNNING_REPORT:
            return None
        spec = busy[0]
        self._reported = spec.task_id
        return pb.LeasedTask(
            spec=pb.TaskSpec(task_id=spec.task_id, name=spec.name, resources=spec.resources),
            lease=busy[4], submitted=busy[3])

    def _report(self, busy: tuple[pb.TaskSpec, bytes, Any, float, int], outcome: int,
                data: bytes, message: str) -> None:
        """Tell the head a leased task ended, for the run history (sent with the driver's
        next batch, or the transport's idle flush: never a write of its own)."""
        spec = busy[0]
        self._client.report_leased(pb.LeasedTask(
            spec=pb.TaskSpec(task_id=spec.task_id, name=spec.name, resources=spec.resources),
            lease=busy[4], submitted=busy[3],
            finished=time.time(),
            result=pb.TaskResult(task_id=spec.task_id, status=outcome,  # type: ignore[arg-type]
                                 data=b"" if outcome == status.OK else data, message=message)))

    def _on_lost(self, actor_id: int) -> None:
        """The leased worker's connection ended: given back, killed for a cancel, or the
        worker died under its task."""
        with self._lock:
            busy = None
            if actor_id == self.actor_id:
                busy, self._busy = self._busy, None
                self._give_back()
        if busy is not None:
            spec, future = busy[0], busy[2]
            why = (f"the worker running {spec.name!r} (leased by this driver for its "
                   "one-at-a-time tasks) died")
            self._resolve(future, status.WORKER_CRASHED, b"", why, spec.name)
            self._report(busy, status.WORKER_CRASHED, b"", why)
