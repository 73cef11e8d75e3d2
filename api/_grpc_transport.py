"""A driver's gRPC stream to a head on another host (see :mod:`api._transport`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc

from api import _errors
from api._transport import IDLE_FLUSH_SECONDS, OnLost, OnMessage, Take
from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common.auth import call_metadata
from cluster.common.protocol import CHANNEL_OPTIONS, pb


class GrpcTransport:
    """One bidirectional gRPC stream, driven by an event loop in a background thread."""

    def __init__(self, target: str, secret: str, take: Take, ca: str = "") -> None:
        self.target = target
        self._ca = ca
        self._secret = secret
        self._take = take
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shoal-client",
                                        daemon=True)
        self._thread.start()
        self._wake: asyncio.Event | None = None
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._closed = False
        self._first: pb.HeadToDriver | None = None

    def connect(self, hello: pb.DriverToHead, timeout: float) -> pb.Welcome:
        future = asyncio.run_coroutine_threadsafe(self._connect(hello, timeout), self._loop)
        try:
            return future.result(timeout + 5)
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self, hello: pb.DriverToHead, timeout: float) -> pb.Welcome:
        self._wake = asyncio.Event()
        from cluster.common.tls import channel as open_channel

        channel = open_channel(self.target, self._ca, CHANNEL_OPTIONS, aio=True)
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except (TimeoutError, grpc.aio.AioRpcError):
            await channel.close()
            hint = " or its TLS certificate did not verify" if self._ca else ""
            raise OSError(f"{self.target} (no answer within {timeout:g}s{hint})") from None
        call = pb_grpc.HeadStub(channel).DriverStream(self._requests(hello),
                                                      metadata=call_metadata(self._secret))
        try:
            first = await asyncio.wait_for(call.read(), timeout)
        except grpc.aio.AioRpcError as err:
            await channel.close()
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise _errors.ConnectionError(
                    f"the shoal cluster at {self.target} refused our secret: the cluster file "
                    "or $SHOAL_SECRET belongs to another cluster (was it restarted?)") from None
            raise OSError(f"{self.target} ({err.code().name}: {err.details()})") from None
        except TimeoutError:
            await channel.close()
            raise OSError(f"{self.target} (no welcome within {timeout:g}s)") from None
        if first is grpc.aio.EOF or not first.HasField("welcome"):
            await channel.close()
            raise OSError(f"{self.target} (closed the stream)")
        self._channel, self._call, self._first = channel, call, first
        return first.welcome

    async def _requests(self, hello: pb.DriverToHead) -> Any:
        yield hello
        wake = self._wake
        assert wake is not None
        while not self._closed:
            await wake.wait()
            wake.clear()
            with self._wake_lock:
                self._wake_pending = False
            message = self._take()
            if message is not None:
                yield message

    def start(self, on_message: OnMessage, on_lost: OnLost) -> None:
        assert self._first is not None
        on_message(self._first)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(
            self._read(on_message, on_lost)))
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._idle_flush()))

    async def _read(self, on_message: OnMessage, on_lost: OnLost) -> None:
        reason = "the head closed the connection"
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                on_message(message)
        except grpc.aio.AioRpcError as err:
            reason = f"lost the head at {self.target}: {err.code().name} {err.details()}"
        except asyncio.CancelledError:
            reason = "the driver disconnected"
        except Exception as err:  # noqa: BLE001
            reason = f"driver stream failed: {err!r}"
        if not self._closed:
            on_lost(reason)

    async def _idle_flush(self) -> None:
        while not self._closed:
            await asyncio.sleep(IDLE_FLUSH_SECONDS)
            if self._wake is not None:
                self._wake.set()

    def flush(self) -> None:
        """Wake the loop thread (once per batch) to send what is pending."""
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        wake = self._wake
        if wake is not None:
            self._loop.call_soon_threadsafe(wake.set)

    def flush_soon(self) -> None:
        """As :meth:`flush`: the loop thread already gathers what piles up meanwhile."""
        self.flush()

    def close(self) -> None:
        async def finish() -> None:
            if self._wake is not None:
                self._wake.set()  # let the request generator send what is pending
                await asyncio.sleep(0.02)
            self._closed = True
            if self._wake is not None:
                self._wake.set()
            if self._call is not None:
                self._call.cancel()
            if self._channel is not None:
                await self._channel.close(grace=0.1)
            # End grpc's own helper tasks too, so none is destroyed while pending.
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(finish(), self._loop).result(5)
            except Exception:  # noqa: BLE001
                pass
        self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
