"""The driver's connection to a head: one gRPC stream, batched both ways.

User threads append task specs, puts, releases and gets to lists under a lock and wake the
client's event-loop thread at most once per batch; the loop thread writes everything that
piled up as one message and resolves futures as result batches arrive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

import grpc

from api import _errors
from api._futures import AppFuture
from cluster import serialization
from cluster.auth import call_metadata
from cluster.head import DRIVER_SHIFT
from cluster.protocol import CHANNEL_OPTIONS, pb, pb_grpc, to_dict

log = logging.getLogger("shoal.api")
RELEASE_FLUSH_SECONDS = 0.2


class Client:
    """A connected driver. Made by :func:`api.init`; not part of the public API."""

    def __init__(self, targets: list[str], secret: str, *, log_to_driver: bool = True) -> None:
        self.targets = targets
        self.secret = secret
        self.log_to_driver = log_to_driver
        self.driver_id = 0
        self.cluster_id = ""
        self.address = ""
        self.nodes: dict[int, pb.NodeInfo] = {}
        self.cwd = os.getcwd()
        self.closed = False
        self._lock = threading.Lock()
        self._submits: list[pb.TaskSpec] = []
        self._puts: list[pb.Value] = []
        self._releases: list[int] = []
        self._gets: list[pb.GetRequest] = []
        self._wake_pending = False
        self._futures: dict[int, AppFuture] = {}
        self._get_waiters: dict[int, concurrent.futures.Future] = {}
        self._sent_functions: set[bytes] = set()
        self._seq = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shoal-client",
                                        daemon=True)
        self._thread.start()
        self._wake: asyncio.Event | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._lost: str = ""

    # ---- connection --------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Connect to the first reachable target; raises ConnectionError saying what failed."""
        future = asyncio.run_coroutine_threadsafe(self._connect(timeout), self._loop)
        try:
            future.result(timeout + 5)
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self, timeout: float) -> None:
        self._wake = asyncio.Event()
        tried = []
        for target in self.targets:
            channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout)
            except (TimeoutError, grpc.aio.AioRpcError):
                tried.append(f"{target} (no answer within {timeout:g}s)")
                await channel.close()
                continue
            stub = pb_grpc.HeadStub(channel)
            call = stub.DriverStream(self._requests(), metadata=call_metadata(self.secret))
            try:
                first = await asyncio.wait_for(call.read(), timeout)
            except grpc.aio.AioRpcError as err:
                await channel.close()
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise _errors.ConnectionError(
                        f"the shoal cluster at {target} refused our secret: the cluster file or "
                        "$SHOAL_SECRET belongs to another cluster (was it restarted?)") from None
                tried.append(f"{target} ({err.code().name}: {err.details()})")
                continue
            except TimeoutError:
                await channel.close()
                tried.append(f"{target} (no welcome within {timeout:g}s)")
                continue
            if first is grpc.aio.EOF or not first.HasField("welcome"):
                await channel.close()
                tried.append(f"{target} (closed the stream)")
                continue
            self._channel, self._call, self.address = channel, call, target
            self.driver_id = first.welcome.driver_id
            self.cluster_id = first.welcome.cluster_id
            for node in first.welcome.nodes:
                self.nodes[node.node_id] = node
            self._loop.create_task(self._read(call))
            self._loop.create_task(self._release_timer())
            return
        raise _errors.ConnectionError(
            "could not connect to a shoal cluster; tried " + "; ".join(tried)
            + ". Is it up? (`clusterctl status`, or api.init() with no address for a local one)")

    async def _requests(self) -> Any:
        yield pb.DriverToHead(hello=pb.DriverHello(hostname=socket.gethostname(),
                                                   pid=os.getpid()))
        wake = self._wake
        assert wake is not None
        while not self.closed:
            await wake.wait()
            wake.clear()
            with self._lock:
                self._wake_pending = False
                submits, puts, releases, gets = (self._submits, self._puts, self._releases,
                                                 self._gets)
                self._submits, self._puts, self._releases, self._gets = [], [], [], []
            if submits or puts or releases or gets:
                yield pb.DriverToHead(submit=submits, put=puts, release=releases, get=gets)

    def _wakeup(self) -> None:
        # Called with self._lock held.
        if not self._wake_pending:
            self._wake_pending = True
            wake = self._wake
            if wake is not None:
                self._loop.call_soon_threadsafe(wake.set)

    async def _release_timer(self) -> None:
        while not self.closed:
            await asyncio.sleep(RELEASE_FLUSH_SECONDS)
            if self._releases and self._wake is not None:
                self._wake.set()

    async def _read(self, call: Any) -> None:
        reason = "the head closed the connection"
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                if message.results:
                    self._on_results(message.results)
                if message.logs and self.log_to_driver:
                    self._print_logs(message.logs)
                for reply in message.replies:
                    waiter = self._get_waiters.pop(reply.request_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(list(reply.values))
                for node in message.nodes:
                    self.nodes[node.node_id] = node
        except grpc.aio.AioRpcError as err:
            reason = f"lost the head at {self.address}: {err.code().name} {err.details()}"
        except asyncio.CancelledError:
            reason = "the driver disconnected"
        except Exception as err:  # noqa: BLE001
            reason = f"driver stream failed: {err!r}"
        if not self.closed:
            self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        self._lost = reason
        with self._lock:
            futures, self._futures = self._futures, {}
            waiters, self._get_waiters = self._get_waiters, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(_errors.WorkerCrashedError(reason))
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(_errors.ConnectionError(reason))

    # ---- results -------------------------------------------------------------------------
    def _on_results(self, results: Iterable[pb.TaskResult]) -> None:
        futures = self._futures
        for result in results:
            fut = futures.pop(result.task_id, None)
            if fut is None or fut.done():
                continue
            if result.status == pb.OK:
                try:
                    value = serialization.loads(result.data)
                except Exception as err:  # noqa: BLE001
                    fut.set_exception(_errors.SerializationError(
                        f"the result of {fut.name} could not be loaded in the driver: {err!r}"))
                    continue
                fut.set_result(value)
            else:
                fut.set_exception(self.error_for(result, fut.name))

    def error_for(self, result: pb.TaskResult, name: str) -> BaseException:
        """The exception a failed result stands for."""
        status, message = result.status, result.message
        if status == pb.APP_ERROR:
            cause, module, kind, text, tb = serialization.loads_error(result.data)
            return _errors.make_task_error(cause, module, kind, text, tb, result.task_id, name)
        if status == pb.BASH_EXIT:
            try:
                code = int(result.data.decode() or 1)
            except ValueError:
                code = 1
            return _errors.BashExitFailure(name, code)
        if status == pb.TIMEOUT:
            return _errors.AppTimeout(f"app {name!r}: {message}")
        if status in (pb.WORKER_CRASHED, pb.NODE_LOST):
            return _errors.WorkerCrashedError(f"app {name!r}: {message}")
        if status == pb.DEPENDENCY_FAILED:
            return _errors.DependencyError(f"app {name!r} did not run: {message}", name)
        if status == pb.UNSCHEDULABLE:
            return _errors.ResourceUnavailableError(f"app {name!r}: {message}")
        if status == pb.OBJECT_LOST:
            return _errors.ObjectLostError(message)
        return _errors.TaskCancelledError(f"app {name!r} was cancelled: {message}")

    def _print_logs(self, lines: Iterable[pb.LogLine]) -> None:
        for line in lines:
            stream = sys.stderr if line.stderr else sys.stdout
            prefix = f"({line.name} task={line.task_id & 0xFFFFFFFFFF} node={line.node}) "
            text = line.text[:-1] if line.text.endswith("\n") else line.text
            try:
                stream.write("".join(prefix + part + "\n" for part in text.split("\n")))
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stdout must not kill the client
                pass

    # ---- called from user threads ---------------------------------------------------------
    def new_id(self) -> int:
        """A fresh cluster-wide object/task id."""
        return (self.driver_id << DRIVER_SHIFT) | next(self._seq)

    def submit(self, spec: pb.TaskSpec, fn_blob: bytes, future: AppFuture) -> None:
        """Queue a task spec; its result resolves `future`."""
        if self._lost:
            raise _errors.ConnectionError(f"not connected to the cluster: {self._lost}")
        with self._lock:
            if spec.fn_id not in self._sent_functions:
                spec.fn_blob = fn_blob
                self._sent_functions.add(spec.fn_id)
            self._futures[spec.task_id] = future
            self._submits.append(spec)
            self._wakeup()

    def put(self, object_id: int, data: bytes) -> None:
        """Queue a put."""
        with self._lock:
            self._puts.append(pb.Value(id=object_id, data=data))
            self._wakeup()

    def release(self, object_id: int) -> None:
        """Drop the driver's reference (sent with the next batch or within 0.2 s)."""
        if not self.closed:
            self._releases.append(object_id)

    def get_values(self, ids: list[int], timeout: float | None) -> list[pb.TaskResult]:
        """Fetch objects from the head (waits until they exist)."""
        waiter: concurrent.futures.Future = concurrent.futures.Future()
        request_id = next(self._seq)
        with self._lock:
            self._get_waiters[request_id] = waiter
            self._gets.append(pb.GetRequest(request_id=request_id, ids=ids))
            self._wakeup()
        try:
            return waiter.result(timeout)
        except concurrent.futures.TimeoutError:
            self._get_waiters.pop(request_id, None)
            raise TimeoutError(f"objects not available within {timeout}s") from None

    def node_resources(self) -> list[dict[str, float]]:
        """Total resources of the alive nodes."""
        return [to_dict(n.total) for n in self.nodes.values() if n.state == "alive"]

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, end the stream, stop the loop thread."""
        if self.closed:
            return

        async def finish() -> None:
            if self._wake is not None:
                self._wake.set()
                await asyncio.sleep(0)
            self.closed = True
            if self._wake is not None:
                self._wake.set()
            if self._call is not None:
                self._call.cancel()
            if self._channel is not None:
                await self._channel.close(grace=0.1)

        try:
            asyncio.run_coroutine_threadsafe(finish(), self._loop).result(5)
        except Exception:  # noqa: BLE001
            pass
        self.closed = True
        self._fail_all("the driver called api.shutdown()")
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
