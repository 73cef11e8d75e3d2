"""A daemon's gRPC link to the head: register, stream results out and tasks in, heartbeat.

When the stream breaks the link retries; once it has not reached the head for
`head_timeout` seconds it stops the daemon, so a dead head never leaves processes running
in a Slurm allocation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import grpc

from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common.auth import call_metadata
from cluster.common.protocol import CHANNEL_OPTIONS, pb
from cluster.common.streams import StreamConn
from cluster.node.daemon import Daemon

log = logging.getLogger("shoal.daemon")

HEARTBEAT_SECONDS = 1.0   # until the head says otherwise (it spaces them out as it grows)
#: Reconnection backoff: doubling from the first to the last, each wait jittered by +-50%,
#: so thousands of daemons that lost (or could not yet reach) a busy head do not retry in
#: lockstep. (A fixed 0.5 s had 5 of 512 simultaneous daemons give up after 30 s.)
RETRY_FIRST, RETRY_LAST = 0.2, 5.0


class GrpcHeadLink:
    """Connects `daemon` to the head at `address`."""

    def __init__(self, daemon: Daemon, address: str, secret: str, register: pb.Register,
                 head_timeout: float = 30.0, ca: str = "") -> None:
        self.ca = ca
        self.daemon = daemon
        self.address = address
        self.secret = secret
        self.register = register
        self.head_timeout = head_timeout
        self._conn: StreamConn | None = None
        self._reached = False
        self.heartbeat_seconds = HEARTBEAT_SECONDS

    def send(self, message: pb.NodeToHead) -> None:
        """Queue a batch for the head (dropped while disconnected: the head retries them)."""
        if self._conn is not None:
            self._conn.send(message)

    async def run(self) -> None:
        """Serve until the head tells us to stop or stays unreachable past the timeout."""
        daemon = self.daemon
        lost_since: float | None = None
        retry = RETRY_FIRST
        while not daemon.stopping:
            self._reached = False
            try:
                await self._session()
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("the head refused our secret; stopping")
                    daemon.stop()
                    return
                log.warning("lost the head at %s: %s", self.address, err.details())
            except Exception:  # noqa: BLE001
                log.exception("head link failed")
            finally:
                self._conn = None
            if daemon.stopping:
                return
            now = time.monotonic()
            if self._reached or lost_since is None:
                lost_since = now
            if self._reached:
                retry = RETRY_FIRST
            if now - lost_since > self.head_timeout:
                log.error("no contact with the head for %.0fs; stopping", self.head_timeout)
                daemon.stop()
                return
            # Whatever was queued belonged to the old registration; the head re-ran it.
            daemon.queue.clear()
            await asyncio.sleep(retry * random.uniform(0.5, 1.5))
            retry = min(RETRY_LAST, retry * 2)

    async def _session(self) -> None:
        conn = StreamConn()
        conn.send(pb.NodeToHead(register=self.register))
        self._conn = conn
        from cluster.common.tls import channel as open_channel

        async with open_channel(self.address, self.ca, CHANNEL_OPTIONS, aio=True) as channel:
            stub = pb_grpc.HeadStub(channel)
            call = stub.NodeStream(conn.messages(), metadata=call_metadata(self.secret))
            beat = asyncio.ensure_future(self._heartbeat(conn))
            try:
                async for message in call:
                    self._reached = True
                    if message.heartbeat_interval:
                        self.heartbeat_seconds = message.heartbeat_interval
                    self.daemon.on_head_message(message)
                    if self.daemon.stopping:
                        break
            finally:
                beat.cancel()
                conn.close()

    async def _heartbeat(self, conn: StreamConn) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            conn.send(pb.NodeToHead(heartbeat=self.daemon.heartbeat()))
