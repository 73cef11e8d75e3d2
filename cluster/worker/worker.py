"""A worker process: runs one task at a time for its daemon.

Started by the daemon as ``python -m cluster.worker FD`` (spawned, never forked from a
process that runs gRPC), with the daemon's end of a socketpair as FD. It caches functions
by id, loads arguments with the dependency values substituted, runs python apps in-process
and bash apps through ``bash -c``, captures ``print`` output per task, and reports results.

Processes a task starts end with the task: the worker is a child subreaper (Linux), so
even children that left its session (``setsid``, double forks) are reparented to it, and
after each task it kills whatever is still below it (see :meth:`Worker.end_children`).
An actor's worker keeps its children for the actor's life; the daemon kills the whole
tree with the worker.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from cluster.common import errors, serialization, wire
from cluster.common.messages import (
    ActorCall,
    ActorCreate,
    Alloc,
    AllocReply,
    Blocked,
    Call,
    CallResult,
    Created,
    DirectAck,
    DirectCall,
    DirectReply,
    DirectTask,
    Done,
    Exit,
    Fn,
    Ready,
    Run,
    RunAfter,
    Unblocked,
)
from cluster.common.proctree import kill_tree
from cluster.common.status import APP_ERROR, BASH_EXIT, OBJECT_STORE_FULL, OK
from cluster.policy.staging import worker_runs
from cluster.store import objectformat
from cluster.store.objectstore import StoreFullError, WriteMappings
from cluster.worker import nested, taskfiles

FLUSH_SECONDS = 0.2
#: A leased worker idle this long after a task gives its CPU back (Blocked, as a waiting
#: task does) and takes it again (Unblocked) with its next task: held between tasks, it
#: kept a burst's tasks from a CPU no task used. Longer than the gaps of a sync loop
#: (~0.1 ms: no extra frame there); an actor proper holds its CPUs for life.
LEASE_IDLE_SECONDS = 0.005
#: How many of a failed bash app's last stderr lines its BashExitFailure carries.
STDERR_TAIL_LINES = 20
#: Linux prctl options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class Worker:
    """The loop of one worker process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.functions: dict[bytes, Any] = {}
        self.task_id = 0
        self.task_name = ""
        self.log_dir = os.environ.get("SHOAL_LOG_DIR", "")
        self._log_file: TextIO | None = None
        self._real_stdout, self._real_stderr = sys.stdout, sys.stderr
        self.out = taskfiles.TaskOutput(self, False, FLUSH_SECONDS)
        self.err = taskfiles.TaskOutput(self, True, FLUSH_SECONDS)
        self._cwd = os.getcwd()
        self.actor: Any = None
        self.actor_loop: Any = None          # asyncio loop thread for async actors
        self.actor_limit: Any = None         # its semaphore (max_concurrency)
        self._send_lock = threading.Lock()
        self.backlog: list[Any] = []        # frames read while waiting for a call result
        self.last_done: tuple[int, bytes | None] = (0, None)  # a RunAfter's input, value
        self.results: dict[int, CallResult | AllocReply] = {}
        self._call_refs = 0
        self.inbuf = bytearray()
        self.server: Any = None              # ActorServer, once this worker holds an actor
        self.actor_id = 0                    # the actor this worker holds (0: none)
        self.leased = False                  # running a task its driver leased it for
        #: Direct calls whose result has refs inside that its caller has not yet said the
        #: head holds (DirectAck): until then this worker's releases are held back.
        self.awaiting_ack: dict[int, Any] = {}  # call id -> the caller's connection
        #: See LEASE_IDLE_SECONDS (None: not leased, or its CPU given back already).
        self._lease_idle: float | None = None
        self._lease_blocked = False
        self.eof = False
        #: cluster.worker.nested: the link of apps' nested client; its reader's inbox.
        self.nested: Any = None
        self.inbox: Any = None

    def send(self, message: tuple) -> None:
        """Send one message to the daemon (from any thread: async actors reply from their
        loop's)."""
        data = wire.encode(message)
        with self._send_lock:
            self.sock.sendall(data)

    def _read(self) -> Any:
        """The next frame from the daemon (blocking); None at EOF."""
        while not self.backlog:
            if not self._fill():
                return None
        return self.backlog.pop(0)

    def _fill(self) -> bool:
        if self.inbox is not None:  # a nested client's reader thread owns the socket
            message = self.inbox.get()
            self.backlog.extend(() if message is None else (message,))
            return message is not None
        data = self.sock.recv(wire.RECV_SIZE)
        if not data:
            return False
        self.inbuf += data
        for body in wire.split(self.inbuf):
            self.backlog.append(wire.decode(body))
        return True

    def call_actor(self, actor_id: int, method: str, args: tuple, kwargs: dict) -> CallFuture:
        """An app on this worker calls an actor: the daemon forwards it to the head."""
        deps: list[int] = []
        blob = serialization.dumps((args, kwargs), deps)
        self._call_refs += 1
        ref = self._call_refs
        self.send(Call(ref, actor_id, method, blob, deps))
        return CallFuture(self, ref, method)

    def alloc(self, size: int) -> str:
        """Room in the node's store for a result of `size` bytes (raises StoreFullError)."""
        self._call_refs += 1
        ref = self._call_refs
        self.send(Alloc(ref, size))
        reply = self.wait_result(ref)
        assert isinstance(reply, AllocReply)
        if not reply.path:
            raise StoreFullError(reply.error)
        return reply.path

    def seal(self, object_id: int, path: str) -> int:
        """Have the daemon seal the store file at `path` (from :meth:`alloc`) as
        `object_id`; returns the node's id once the object is readable there."""
        self._call_refs += 1
        ref = self._call_refs
        self.send(Alloc(ref, 0, object_id, path))
        reply = self.wait_result(ref)
        assert isinstance(reply, AllocReply)
        if not reply.path:
            raise OSError(f"the daemon could not seal the result: {reply.error}")
        return reply.node_id

    def wait_result(self, ref: int) -> CallResult | AllocReply:
        """Read frames until the answer to request `ref` arrives (others are kept for
        later): an actor call's result, or a store allocation."""
        kept: list[Any] = []
        while ref not in self.results:
            message = self._read()
            if message is None:
                raise ConnectionError("lost the daemon while waiting for an answer")
            if type(message) is CallResult or type(message) is AllocReply:
                self.results[message.ref] = message
            else:
                kept.append(message)
        self.backlog[:0] = kept  # handled by the serve loop afterwards, in order
        return self.results.pop(ref)

    def log_to_file(self, text: str) -> None:
        if self._log_file is None:
            if not self.log_dir:
                return
            try:
                path = os.path.join(self.log_dir, f"task-{self.task_id:x}.log")
                self._log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self.log_dir = ""
                return
        self._log_file.write(text)

    def serve(self) -> None:
        global CURRENT
        CURRENT = self
        self.send(Ready(os.getpid()))
        while True:
            if self.server is not None and not self.backlog:
                # An actor: serve direct callers and the daemon alike.
                if not self.server.poll(self._direct_call, self._lease_idle):
                    self._lease_idle = None  # a leased worker, idle: its CPU is free
                    self._lease_blocked = True
                    self.send(Blocked(self.actor_id, False))
                if self.eof:
                    return
                if not self.backlog:
                    continue
            message = self._read()
            if message is None:
                return
            kind = type(message)
            if kind is Run or kind is RunAfter:
                self.run(message)
                MAPPINGS.release_idle()
            elif kind is ActorCall:
                self.actor_call(message)
                MAPPINGS.release_idle()
            elif kind is Fn:
                self.functions[message.fn_id] = message.blob
            elif kind is ActorCreate:
                self.actor_create(message)
            elif kind is Exit:
                return

    def _function(self, fn_id: bytes) -> Any:
        fn = self.functions[fn_id]
        if isinstance(fn, bytes):
            fn = serialization.loads_function(fn)
            self.functions[fn_id] = fn
        return fn

    def run(self, m: Run | RunAfter) -> None:
        """A task from the daemon: execute it, end what it left running, report
        :class:`Done`. A task sent ahead (:class:`RunAfter`) runs only if the task this
        worker ran last is its input and ended as ``worker_runs`` says (else the daemon
        places it): with that one's value, no message in between. A prefetched one
        (`after` 0) runs in any case."""
        if type(m) is RunAfter:
            after, (last, value) = m.after, self.last_done
            if after and (after != last or value is None):
                return
            m = Run(*m.run)
            if after:
                m.deps[last] = value
        assert type(m) is Run
        outcome = self.execute(m.task_id, m.fn_id, m.kind, m.name, m.args, m.deps, m.gpus,
                               m.stdout, m.stderr, m.cwd, m.env, store=True)
        self.end_children()  # before Done: no dependent task ever sees the leftovers
        self.send(Done(m.task_id, *outcome))
        self.last_done = (m.task_id, outcome[1] if worker_runs(outcome[0], outcome[1]) else None)
        if self.nested is not None:
            self.nested.after_task(m.task_id, outcome[0] != OK)

    def end_children(self) -> None:
        """Kill and reap every process below this worker: what the last task started
        and left running (children, forks, setsid'd grandchildren reparented to us).

        This runs after every task, the hottest path, so the common case is one
        syscall: ``waitpid(-1, WNOHANG)`` fails with ECHILD when the worker has no
        child at all (~1 us; reading /proc instead costs ~20 us per task). Only when
        children exist is the tree read from /proc and killed.
        """
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # reaped one that had exited by itself: look again
        except ChildProcessError:
            return
        kill_tree(os.getpid(), include_root=False)
        # Reap what was killed (their children are reparented to us as they die). A
        # process stuck in the kernel may take longer: left for the next task's check.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.001)

    def execute(
        self,
        task_id: int,
        fn_id: bytes,
        kind: int,
        name: str,
        args_blob: bytes | int,
        dep_values: dict[int, Any],
        gpus: str | None = None,
        stdout: tuple[str, str] | None = None,
        stderr: tuple[str, str] | None = None,
        cwd: str = "",
        env: dict[str, str] | None = None,
        fn: Any = None,
        store: bool = False,
    ) -> tuple[int, Any, float, str]:
        """Run one function call with output captured; (status, data, seconds, message).

        With `store`, a result too large to travel inline is written to the node's store
        and `data` is ``("stored", path, size, nested refs)``; a small one with refs inside
        is ``("inline", bytes, nested refs)``; otherwise `data` is the pickled value.
        """
        self.task_id, self.task_name = task_id, name
        if cwd and cwd != self._cwd:
            try:
                os.chdir(cwd)
                self._cwd = cwd
            except OSError:
                pass  # the driver's directory does not exist on this node
        start = time.perf_counter()
        sys.stdout, sys.stderr = self.out, self.err
        saved: dict[str, str | None] = {}
        if env or gpus is not None:
            overrides = dict(env or {})
            if gpus is not None:
                overrides["CUDA_VISIBLE_DEVICES"] = gpus
            saved = {key: os.environ.get(key) for key in overrides}
            os.environ.update(overrides)
        try:
            status, data, message = OK, b"", ""
            try:
                if fn is None:
                    fn = self._function(fn_id)
                if isinstance(args_blob, int):  # stored: too large to travel inline
                    where, path = dep_values[args_blob]
                    if where == "missing":
                        raise LookupError(path)
                    args, kwargs = MAPPINGS.read(path, _resolver(dep_values))
                elif dep_values:
                    args, kwargs = serialization.loads(args_blob, _resolver(dep_values))
                else:  # no refs inside: plain pickle is enough (and faster)
                    args, kwargs = wire.pickle.loads(args_blob)
                value = fn(*args, **kwargs)
                if self.nested is not None:
                    self.nested.holding = True  # see NestedLink.holding
                if kind == 1:
                    status, data, message = self._run_bash(name, value, stdout, stderr)
                elif store:
                    try:
                        data = self._encode_result(value)
                    except StoreFullError as err:  # not the app's error: the driver
                        status, data = OBJECT_STORE_FULL, b""  # raises ObjectStoreFullError
                        message = f"its result does not fit in the node's object store: {err}"
                else:
                    data = serialization.dumps_value(value)
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the driver
                # Skip this frame: the user's code starts one level down.
                tb = "".join(traceback.format_exception(type(exc), exc,
                                                        exc.__traceback__.tb_next
                                                        if exc.__traceback__ else None))
                status = APP_ERROR
                data, message = serialization.describe_error(exc, tb)
        finally:
            self.out.flush()
            self.err.flush()
            sys.stdout, sys.stderr = self._real_stdout, self._real_stderr
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            self.close_log()
        return status, data, time.perf_counter() - start, message

    def close_log(self) -> None:
        """Close the current task's log file (reopened, appending, on its next print)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _encode_result(self, value: Any) -> Any:
        enc = objectformat.encode(value)
        inline = objectformat.inline_bytes(enc, value)
        if inline is not None:
            return ("inline", inline, enc.refs) if enc.refs else inline
        path = self.alloc(enc.size)
        WRITES.write(path, enc.size, enc.write_into)
        return ("stored", path, enc.size, enc.refs)

    # ---- actors ----------------------------------------------------------------------------
    def actor_create(self, m: ActorCreate) -> None:
        """Instantiate the actor's class; this process then serves only its calls."""
        max_concurrency = m.max_concurrency
        self.actor_id = m.actor_id
        overrides = dict(m.env or {})
        if m.gpus is not None:
            overrides["CUDA_VISIBLE_DEVICES"] = m.gpus  # for the actor's whole life
        os.environ.update(overrides)

        def construct(cls: Any, *args: Any, **kwargs: Any) -> None:
            self.actor = cls(*args, **kwargs)
            if max_concurrency > 1 or any(inspect.iscoroutinefunction(getattr(cls, m, None))
                                          for m in dir(cls) if not m.startswith("__")):
                self._start_actor_loop(max_concurrency)

        klass = self._function(m.fn_id)
        status, data, seconds, message = self.execute(
            m.actor_id, b"", 0, m.name, m.args, m.deps, cwd=m.cwd,
            fn=lambda *a, **k: construct(klass, *a, **k))
        route = ""
        if status == OK and m.secret:
            from cluster.worker.actorserver import ActorServer

            try:
                self.server = ActorServer(m.secret, m.runtime_dir, m.actor_id, m.host)
                self.server.register_daemon(self.sock, self._daemon_readable)
                self.server.on_drop = self._caller_gone
                route = self.server.route
            except OSError as err:  # direct calls unavailable: calls go through the head
                print(f"direct calls disabled: {err}", file=sys.__stderr__)
        self.send(Created(m.actor_id, status, data, seconds, message, route))

    def cpus_holder(self) -> int:
        """The id whose CPUs a wait in the running code gives back: its task's, a leased
        task's lease actor's, or 0 for an actor's method (an actor keeps its CPUs)."""
        if self.leased:
            return self.actor_id
        return self.task_id if self.server is None else 0

    def _acked(self) -> None:
        if not self.awaiting_ack and self.nested is not None:
            self.nested.after_task(0, False)  # the releases held back for them go now

    def _caller_gone(self, conn: Any) -> None:
        """A direct caller hung up: it will never acknowledge its results' refs."""
        for call_id in [c for c, k in self.awaiting_ack.items() if k is conn]:
            del self.awaiting_ack[call_id]
        self._acked()

    def _daemon_readable(self) -> None:
        if not self._fill():
            self.eof = True

    def _direct_call(self, conn: Any, message: DirectCall | DirectTask | DirectAck) -> None:
        call_id = message.call_id
        if isinstance(message, DirectAck):
            self.awaiting_ack.pop(call_id, None)
            self._acked()
            return

        def reply(status: int, data: Any, seconds: float, text: str) -> None:
            if type(data) is tuple:
                try:
                    data = self._direct_data(call_id, data)
                except Exception as err:  # noqa: BLE001 - the caller hears why
                    status, text = APP_ERROR, f"the result could not be stored: {err}"
                    data = serialization.dumps_error(err, "")
                else:
                    if data[-1]:  # refs inside: ours go once the caller says the head has them
                        self.awaiting_ack[call_id] = conn
            conn.send(DirectReply(call_id, status, data, text))

        if isinstance(message, DirectTask):  # a leased worker's task: run as a Run is
            if message.fn_blob:
                self.functions[message.fn_id] = message.fn_blob
            if self._lease_blocked:
                self._lease_blocked = False
                self.send(Unblocked(self.actor_id))
            self.leased = True
            try:
                outcome = self.execute(call_id, message.fn_id, 0, message.name, message.args,
                                       {}, cwd=message.cwd, store=True)
            finally:
                self.leased = False
            self.end_children()
            reply(*outcome)
            if self.nested is not None:
                self.nested.after_task(call_id, outcome[0] != OK)
            MAPPINGS.release_idle()
            self._lease_idle = LEASE_IDLE_SECONDS
        else:
            self._call(call_id, message.method, message.args, {}, reply)

    def _direct_data(self, call_id: int, data: tuple) -> Any:
        """A direct call's result as the caller gets it. A large one was written into
        this node's store: the daemon seals it under the call's id and the caller gets
        ``("stored", size, node id, nested refs)``, registers it with the head (as a
        put) and maps it from the store when asked, instead of 512 MB travelling inside
        a reply frame (4.1 s; a stored result reaches a driver on the host in ~0.2 ms).
        A small one with refs inside travels as its bytes, as before."""
        if data[0] == "stored":
            _, path, size, nested = data
            data = ("stored", size, self.seal(call_id, path), list(nested))
        else:
            data = ("inline", data[1], list(data[2]))
        return data

    def _start_actor_loop(self, max_concurrency: int) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="actor-loop", daemon=True).start()
        self.actor_loop = loop

        async def make_limit() -> asyncio.Semaphore:
            return asyncio.Semaphore(max(1, max_concurrency))

        # At most max_concurrency async calls run at once, whichever path they came by.
        self.actor_limit = asyncio.run_coroutine_threadsafe(make_limit(), loop).result()

    def actor_call(self, m: ActorCall) -> None:
        """A call that came through the head and daemon."""
        task_id = m.task_id

        def reply(status: int, data: Any, seconds: float, text: str) -> None:
            self.send(Done(task_id, status, data, seconds, text))

        self._call(task_id, m.method, m.args, m.deps, reply)

    def _call(self, task_id: int, method: str, args_blob: bytes, deps: dict[int, Any],
              reply: Any) -> None:
        """Run one method (async methods concurrently on the actor's event loop). A
        result too large to travel inline goes into the node's store, as a task's does
        (async methods' results stay inline: they finish on the loop's thread, which
        cannot wait for the daemon's answers on this thread's socket)."""
        bound = getattr(self.actor, method, None) if not method.startswith("__") else None
        if bound is None:
            err = AttributeError(f"{type(self.actor).__name__} has no method {method!r}")
            reply(APP_ERROR, serialization.dumps_error(err, ""), 0.0, str(err))
            return
        if self.actor_loop is not None and inspect.iscoroutinefunction(bound):
            self._call_async(bound, args_blob, deps, reply)
            return
        outcome = self.execute(task_id, b"", 0, method, args_blob, deps, fn=bound, store=True)
        reply(*outcome)
        if self.nested is not None:
            self.nested.after_task(task_id, outcome[0] != OK)

    def _call_async(self, bound: Any, args_blob: bytes, deps: dict[int, Any],
                    reply: Any) -> None:
        import asyncio

        start = time.perf_counter()

        def failed(exc: BaseException) -> None:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            data, message = serialization.describe_error(exc, tb)
            reply(APP_ERROR, data, time.perf_counter() - start, message)

        try:
            args, kwargs = serialization.loads(args_blob, _resolver(deps))
        except BaseException as exc:  # noqa: BLE001
            failed(exc)
            return

        async def call() -> None:
            try:
                async with self.actor_limit:
                    value = await bound(*args, **kwargs)
                data = serialization.dumps_value(value)
            except BaseException as exc:  # noqa: BLE001
                failed(exc)
                return
            reply(OK, data, time.perf_counter() - start, "")

        asyncio.run_coroutine_threadsafe(call(), self.actor_loop)

    def _run_bash(
        self,
        name: str,
        command: Any,
        stdout: tuple[str, str] | None,
        stderr: tuple[str, str] | None,
    ) -> tuple[int, bytes, str]:
        if not isinstance(command, str):
            raise TypeError(
                f"bash_app {name!r} must return the command line as a str, "
                f"got {type(command).__name__}"
            )
        out = taskfiles.open_target(stdout)
        err = taskfiles.open_target(stderr)
        # Output that is not redirected goes to anonymous temporary files, not pipes: a
        # pipe ends only when every process holding it has closed it, and background
        # jobs inherit the shell's stdout, so `sleep 25 & echo started` took 25 s. The
        # app ends when its shell exits; the files are read then.
        cap_out = taskfiles.spool_file(self.log_dir) if out is None else None
        cap_err = taskfiles.spool_file(self.log_dir) if err is None else None
        try:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else cap_out,
                stderr=err if err is not None else cap_err,
                process_group=0,  # its own group: its background jobs end with it
            )
            try:
                code = proc.wait()
            finally:
                try:  # the shell is gone: its leftover background jobs go too
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            captured_out = taskfiles.read_spool(cap_out)
            captured_err = taskfiles.read_spool(cap_err)
        finally:
            for f in (out, err, cap_out, cap_err):
                if f is not None:
                    f.close()
        if captured_out:
            self.out.write(captured_out)
        if captured_err:
            self.err.write(captured_err)
        if code != 0:
            logs = [target[0] for target in (stdout, stderr) if target and target[0]]
            if (out is None or err is None) and self.log_dir:
                logs.append(os.path.join(self.log_dir, f"task-{self.task_id:x}.log"))
            tail = taskfiles.tail(stderr[0]) if err is not None and stderr else captured_err
            tail = "".join(tail.splitlines(keepends=True)[-STDERR_TAIL_LINES:])
            return BASH_EXIT, errors.bash_exit_payload(code, tail, logs), (
                f"bash app {name!r} exited with code {code}"
            )
        return OK, serialization.dumps(0), ""


def _resolver(dep_values: dict[int, Any]) -> Any:
    """Loads dependency values: inline bytes, or ``("path", file)`` in the node's store
    (mapped zero-copy)."""
    cache: dict[int, Any] = {}

    def resolve(object_id: int) -> Any:
        if object_id not in cache:
            value = dep_values[object_id]
            if isinstance(value, tuple):
                if value[0] == "missing":
                    raise LookupError(value[1])
                cache[object_id] = MAPPINGS.read(value[1])
            else:
                cache[object_id] = serialization.loads(value)
        return cache[object_id]

    return resolve


class CallFuture:
    """What calling an actor method returns inside an app: ``.result()`` waits for it."""

    def __init__(self, worker: Worker, ref: int, method: str) -> None:
        self._worker = worker
        self._ref = ref
        self._method = method
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = False

    def result(self, timeout: float | None = None) -> Any:
        """The call's value; raises what a driver would (errors.error_for): a
        TaskError that is also the method's exception type, ActorDiedError, ..."""
        if not self._done:
            reply = nested.wait_reply(self._worker, self._ref, f"actor method {self._method!r}",
                                      timeout)
            assert isinstance(reply, CallResult)
            if reply.status == OK:
                self._value = serialization.loads(reply.data)
            else:
                self._error = errors.error_for(reply.status, reply.data, reply.message,
                                               self._method)
            self._done = True
        if self._error is not None:
            raise self._error
        return self._value


#: Mappings of store objects this worker has read (kept warm for reused files).
MAPPINGS = objectformat.MappingCache()
#: Mappings of store files this worker has written results into (likewise).
WRITES = WriteMappings()

#: The Worker of this process (None outside workers): actor handles use it to call.
CURRENT: Worker | None = None


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the daemon dies, so no worker (or actor) outlives it; and
    become a child subreaper, so processes our apps start that leave our tree's session
    (setsid, double forks) are reparented to us when their parent exits, not to init,
    and can be found and ended with the task (or with this worker)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        if os.getppid() == 1:  # the daemon died before we got here
            os._exit(1)
    except (OSError, AttributeError):
        pass


def main() -> None:
    _die_with_parent()
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    worker = Worker(sock)
    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        worker.end_children()  # an actor's children, when the daemon let it exit
