"""A daemon's link to the head: register, stream results out and tasks in, heartbeat.

Two transports carry the same protobuf messages. :class:`LaneHeadLink` (the head's *node
lane*, ``--head-address tcp:HOST:PORT``, what ``clusterctl up`` and the autoscaler's
blocks use) sends them as length-prefixed frames over one TCP connection whose first frame
is the cluster secret (TLS on a --tls cluster); :class:`GrpcHeadLink` (``HOST:PORT``) over
a gRPC stream. The lane exists for cost: a daemon that never imports gRPC boots on less
CPU and holds ~14 MB less, and the head spends less per task and per heartbeat on it
(figures in the README's Scale and Benchmarks sections).

When the connection breaks the link retries; once it has not reached the head for
`head_timeout` seconds it stops the daemon, so a dead head never leaves processes running
in a Slurm allocation.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from cluster.common import wire
from cluster.common.protocol import pb
from cluster.common.streams import LaneClient, StreamConn
from cluster.node.daemon import Daemon

log = logging.getLogger("shoal.daemon")

HEARTBEAT_SECONDS = 1.0   # until the head says otherwise (it spaces them out as it grows)
#: Reconnection backoff: doubling from the first to the last, each wait jittered by +-50%,
#: so thousands of daemons that lost (or could not yet reach) a busy head do not retry in
#: lockstep. (A fixed 0.5 s had 5 of 512 simultaneous daemons give up after 30 s.)
RETRY_FIRST, RETRY_LAST = 0.2, 5.0
#: On the node lane the head answers each heartbeat; this many intervals (plus the slack,
#: in seconds) without a word from it and the daemon takes it for gone.
SILENT_BEATS, SILENT_SLACK = 3, 5.0
#: How long one attempt to connect to the node lane may take.
CONNECT_SECONDS = 10.0


class HeadRefused(Exception):
    """The head refused this daemon's secret: retrying cannot help."""


class HeadLink:
    """Connects `daemon` to the head at `address`; the transport is a subclass's
    :meth:`_session`, the retry loop and the heartbeat are shared."""

    def __init__(self, daemon: Daemon, address: str, secret: str, register: pb.Register,
                 head_timeout: float = 30.0) -> None:
        self.daemon = daemon
        self.address = address
        self.secret = secret
        self.register = register
        self.head_timeout = head_timeout
        self._conn: Any = None
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
            except HeadRefused:
                log.error("the head refused our secret; stopping")
                daemon.stop()
                return
            except (ConnectionError, OSError, EOFError) as err:
                log.warning("lost the head at %s: %s", self.address, err)
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
        """One connection: register, then hand the head's messages to the daemon until it
        ends (raise HeadRefused, or ConnectionError/OSError when the head is lost)."""
        raise NotImplementedError

    def _received(self, message: pb.HeadToNode) -> None:
        self._reached = True
        if message.heartbeat_interval:
            self.heartbeat_seconds = message.heartbeat_interval
        self.daemon.on_head_message(message)

    async def _heartbeat(self, conn: Any) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            conn.send(pb.NodeToHead(heartbeat=self.daemon.heartbeat()))


class LaneHeadLink(HeadLink):
    """The link over the head's node lane (`address` is ``HOST:PORT``, or ``[V6]:PORT``;
    `ca`: a --tls cluster's certificate authority, PEM: the lane is then TLS, the head
    verified against it)."""

    def __init__(self, daemon: Daemon, address: str, secret: str, register: pb.Register,
                 head_timeout: float = 30.0, ca: str = "") -> None:
        super().__init__(daemon, address, secret, register, head_timeout)
        self.ca = ca

    async def _session(self) -> None:
        silent = 0.0   # set when the watch below gave up on the head

        def on_body(body: bytes) -> None:
            if not body:   # the head's answer to a heartbeat (LaneClient noted the time)
                return
            try:
                message = pb.HeadToNode.FromString(body)
            except Exception:  # noqa: BLE001
                log.warning("a malformed message from the head; reconnecting")
                client.close()
                return
            self._received(message)
            if self.daemon.stopping:
                client.close()

        async def watch() -> None:
            # The head answers every heartbeat; hearing nothing for SILENT_BEATS intervals
            # (plus slack) means it is gone, even when no FIN came (a dead host, a cut
            # network): a TCP connection would otherwise look open for ~15 minutes.
            nonlocal silent
            while not client.ended.done():
                await asyncio.sleep(1.0)
                limit = SILENT_BEATS * self.heartbeat_seconds + SILENT_SLACK
                if asyncio.get_running_loop().time() - client.heard > limit:
                    silent = limit
                    client.close()
                    return

        context: Any = None
        name = None
        if self.ca:
            from cluster.common import tls

            context, name = tls.client_context(self.ca), tls.TARGET_NAME
        # (Bounded: a SYN to a dead host is retried for ~2 minutes, past --head-timeout.)
        client = await asyncio.wait_for(
            LaneClient.connect(self.address, self.secret, on_body, context, name),
            CONNECT_SECONDS)
        client.send(pb.NodeToHead(register=self.register))
        self._conn = client
        beat = asyncio.ensure_future(self._heartbeat(client))
        watcher = asyncio.ensure_future(watch())
        try:
            await client.ended
        finally:
            beat.cancel()
            watcher.cancel()
            client.close()
        if client.refused:
            raise HeadRefused()
        if silent:
            raise ConnectionError(f"no word from the head for {silent:.0f}s")
        if not self.daemon.stopping:
            raise ConnectionError("the head closed the connection")


class GrpcHeadLink(HeadLink):
    """The link over a gRPC stream (`address` is the head's ``HOST:PORT``; `ca`: a --tls
    cluster's certificate authority, PEM)."""

    def __init__(self, daemon: Daemon, address: str, secret: str, register: pb.Register,
                 head_timeout: float = 30.0, ca: str = "") -> None:
        super().__init__(daemon, address, secret, register, head_timeout)
        self.ca = ca

    async def _session(self) -> None:
        import grpc  # (here: a daemon on the node lane never loads gRPC)

        from cluster.common import shoal_pb2_grpc as pb_grpc
        from cluster.common.auth import call_metadata
        from cluster.common.protocol import CHANNEL_OPTIONS
        from cluster.common.tls import channel as open_channel

        conn = StreamConn()
        conn.send(pb.NodeToHead(register=self.register))
        self._conn = conn
        try:
            async with open_channel(self.address, self.ca, CHANNEL_OPTIONS,
                                    aio=True) as channel:
                stub = pb_grpc.HeadStub(channel)
                call = stub.NodeStream(conn.messages(), metadata=call_metadata(self.secret))
                beat = asyncio.ensure_future(self._heartbeat(conn))
                try:
                    async for message in call:
                        self._received(message)
                        if self.daemon.stopping:
                            break
                finally:
                    beat.cancel()
                    conn.close()
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise HeadRefused() from err
            raise ConnectionError(err.details()) from err


def make_link(daemon: Daemon, address: str, secret: str, register: pb.Register,
              head_timeout: float = 30.0, ca: str = "") -> HeadLink:
    """The link `address` asks for: ``tcp:HOST:PORT`` the node lane, ``HOST:PORT`` gRPC
    (TLS either way with `ca`, a --tls cluster's CA)."""
    if address.startswith(wire.TCP_PREFIX):
        return LaneHeadLink(daemon, address, secret, register, head_timeout, ca=ca)
    return GrpcHeadLink(daemon, address, secret, register, head_timeout, ca=ca)
