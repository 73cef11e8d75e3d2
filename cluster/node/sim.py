"""Simulated nodes: many fake daemons in one asyncio process, for scale benchmarks and tests.

    SHOAL_SECRET=... python -m cluster.node.sim --head-address tcp:HOST:PORT --cluster-id ID \\
        --nodes 1000 --slots 64 [--name-prefix sim] [--heartbeat 1.0]

Each simulated node is what the head sees of a real daemon: its own connection to the
head's node lane (``--head-address tcp:HOST:PORT``, as ``clusterctl up`` joins daemons; a
TCP connection each) or its own gRPC ``NodeStream`` call (``HOST:PORT``), a ``Register``
with ``cpus=--slots`` (plus the ``node:NAME`` resource a real daemon advertises), a
heartbeat every ``--heartbeat`` seconds, and one OK ``TaskResult`` per task.
No worker runs: a task's result is the pickled ``None`` a real worker would send for a
no-op app, sent at once, or after ``seconds`` for a task named ``sleep`` called with a
number (``def sleep(seconds): ...``). Everything else (head, protocol, driver) is real, so
one small machine can stand in for a large cluster.

The secret comes from ``$SHOAL_SECRET`` or ``--secret-file`` (a cluster file or plain
text), never argv. A node whose registration fails (the head is busy or not up yet)
retries with jittered exponential backoff, so thousands of nodes started at once do not
retry in lock step. A node stops when the head tells it to, or when it has not reached
the head for ``--head-timeout`` seconds. When every node has stopped the process prints
one JSON line with its counters (tasks answered, duplicates, registrations, retries) and
exits; SIGTERM/SIGINT stop it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
import time
from typing import Any

import grpc

from cluster.common import auth, serialization, wire
from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common.protocol import CHANNEL_OPTIONS, pb
from cluster.common.streams import LaneClient, StreamConn
from cluster.common.tls import channel as open_channel

log = logging.getLogger("shoal.sim")

#: What a real worker sends for an app that returned None (see Worker._encode_result).
NONE_DATA = serialization.dumps_value(None)
#: Registration backoff: first retry after about BACKOFF_BASE s, doubling up to BACKOFF_MAX.
BACKOFF_BASE = 0.2
BACKOFF_MAX = 5.0


class SimNode:
    """One simulated daemon: registers, heartbeats, answers tasks, reconnects."""

    def __init__(self, sim: Simulation, name: str, channel: grpc.aio.Channel | None) -> None:
        self.sim = sim
        self.name = name
        self.channel = channel
        self.node_id = 0
        self.stopping = False
        self.running = 0  # sleeping tasks (reported in heartbeats)
        self.period = sim.heartbeat  # until the head says otherwise
        self.results: list[pb.TaskResult] = []
        self._outbox: StreamConn | LaneClient | None = None

    def register_message(self) -> pb.Register:
        sim = self.sim
        register = pb.Register(name=self.name, address=sim.address, pid=os.getpid(),
                               block_id=sim.block_id)
        register.total.cpus = float(sim.slots)
        # As a real daemon does: a task can ask for {"node:NAME": 0.01} to run here.
        register.total.custom[f"node:{self.name}"] = 1.0
        return register

    async def run(self) -> None:
        """Serve until the head says shutdown or stays unreachable past the timeout."""
        sim = self.sim
        lost_since = time.monotonic()
        failures = 0
        while not (self.stopping or sim.stopping):
            reached = False
            try:
                reached = await (self._session() if self.channel is not None
                                 else self._lane_session())
            except _Refused:
                log.error("%s: the head refused our secret; stopping", self.name)
                break
            except (ConnectionError, OSError) as err:
                reached = self.node_id != 0
                log.info("%s: connection ended: %s", self.name, err)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("%s: the head refused our secret; stopping", self.name)
                    break
                reached = self.node_id != 0
                log.info("%s: stream ended: %s %s", self.name, err.code().name, err.details())
            except Exception:  # noqa: BLE001 - one node's failure must not end the others
                log.exception("%s: head link failed", self.name)
            finally:
                self._outbox = None
                self.node_id = 0
            if self.stopping or sim.stopping:
                break
            now = time.monotonic()
            if reached:
                lost_since = now
                failures = 0
            if now - lost_since > sim.head_timeout:
                log.error("%s: no contact with the head for %.0fs; stopping", self.name,
                          sim.head_timeout)
                break
            failures += 1
            sim.retries += 1
            # Full jitter: spread a crowd of nodes refused together over the whole window.
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(0.1 * delay, delay))
        self.stopping = True

    async def _session(self) -> bool:
        """One registration and stream; returns whether the head answered it."""
        outbox = StreamConn()
        outbox.send(pb.NodeToHead(register=self.register_message()))
        self._outbox = outbox
        call = pb_grpc.HeadStub(self.channel).NodeStream(
            outbox.messages(), metadata=auth.call_metadata(self.sim.secret))
        beat = asyncio.ensure_future(self._heartbeat(outbox))
        reached = False
        try:
            async for message in call:
                if not reached:
                    reached = True
                    self.sim.registrations += 1
                self._on_message(message)
                if self.stopping:
                    break
        finally:
            beat.cancel()
            outbox.close()
            call.cancel()
        return reached

    async def _lane_session(self) -> bool:
        """One registration over the node lane; returns whether the head answered it."""
        reached = False

        def on_body(body: bytes) -> None:
            nonlocal reached
            if not reached:
                reached = True
                self.sim.registrations += 1
            self._on_message(pb.HeadToNode.FromString(body))
            if self.stopping:
                client.close()

        client = await LaneClient.connect(self.sim.head_address, self.sim.secret, on_body)
        client.send(pb.NodeToHead(register=self.register_message()))
        self._outbox = client
        beat = asyncio.ensure_future(self._heartbeat(client))
        try:
            await client.ended
        finally:
            beat.cancel()
            client.close()
        if client.refused:
            raise _Refused()
        return reached

    async def _heartbeat(self, outbox: StreamConn | LaneClient) -> None:
        # A random phase, so thousands of nodes do not beat in the same loop turn.
        await asyncio.sleep(random.uniform(0, self.period))
        while True:
            outbox.send(pb.NodeToHead(heartbeat=pb.Heartbeat(
                running=self.running, workers=self.sim.slots)))
            await asyncio.sleep(self.period)

    def _on_message(self, message: pb.HeadToNode) -> None:
        if message.node_id:
            self.node_id = message.node_id
        if message.heartbeat_interval:  # as a real daemon does (cluster/node/headlink.py)
            self.period = message.heartbeat_interval
        if message.tasks:
            sim = self.sim
            sim.task_batches += 1
            for spec in message.tasks:
                sim.count_task(spec)
                seconds = _sleep_seconds(spec)
                if seconds > 0:
                    self.running += 1
                    sim.loop.call_later(seconds, self._finish_sleep, spec.task_id,
                                        spec.attempt, seconds)
                else:
                    self._answer(spec.task_id, spec.attempt, spec.kind, 0.0)
        if message.shutdown:
            self.stopping = True

    def _finish_sleep(self, task_id: int, attempt: int, seconds: float) -> None:
        self.running -= 1
        if self._outbox is not None:  # else the head already counts this node as lost
            self._answer(task_id, attempt, pb.PYTHON, seconds)

    def _answer(self, task_id: int, attempt: int, kind: int, seconds: float) -> None:
        if kind in (pb.PYTHON, pb.ACTOR_CALL):
            result = pb.TaskResult(task_id=task_id, status=pb.OK, data=NONE_DATA,
                                   node=self.name, attempt=attempt, run_seconds=seconds)
        elif kind == pb.BASH:
            result = pb.TaskResult(task_id=task_id, status=pb.OK, data=b"0", node=self.name,
                                   attempt=attempt, run_seconds=seconds)
        else:  # no worker process could host an actor here
            result = pb.TaskResult(task_id=task_id, status=pb.WORKER_CRASHED, node=self.name,
                                   attempt=attempt,
                                   message=f"{self.name} is a simulated node: no actors")
        self.results.append(result)
        self.sim.dirty(self)

    def flush(self) -> None:
        """Send this node's results gathered during this loop turn as one batch."""
        if self.results and self._outbox is not None:
            self._outbox.send(pb.NodeToHead(results=self.results))
            self.sim.result_batches += 1
        self.results = []


class _Refused(Exception):
    """The head refused the secret."""


def _sleep_seconds(spec: pb.TaskSpec) -> float:
    """How long a task named "sleep" should take (its first argument); 0 for the rest."""
    if spec.name != "sleep" or not spec.args:
        return 0.0
    try:
        args, kwargs = serialization.loads(spec.args)
        value = args[0] if args else kwargs.get("seconds", 0.0)
        return max(0.0, float(value))
    except Exception:  # noqa: BLE001 - a sleep we cannot read is a no-op
        return 0.0


class Simulation:
    """All simulated nodes of this process, with their shared counters."""

    def __init__(self, ns: argparse.Namespace, secret: str, ca: str) -> None:
        self.head_address: str = ns.head_address
        self.cluster_id: str = ns.cluster_id
        self.slots: int = ns.slots
        self.heartbeat: float = ns.heartbeat
        self.head_timeout: float = ns.head_timeout
        self.address: str = ns.address
        self.block_id: str = ns.block_id
        self.secret = secret
        self.ca = ca
        self.count: int = ns.nodes
        self.prefix: str = ns.name_prefix
        self.nodes_per_channel = max(1, ns.nodes_per_channel)
        self.start_spread: float = ns.start_spread
        self.stopping = False
        self.tasks = 0
        self.duplicates = 0
        self.registrations = 0
        self.retries = 0
        self.task_batches = 0    # head-to-node messages carrying tasks
        self.result_batches = 0  # node-to-head messages carrying results
        self._seen: set[tuple[int, int]] = set()
        self._dirty: list[SimNode] = []
        self._flush_pending = False
        self.loop = asyncio.get_running_loop()
        self.nodes: list[SimNode] = []
        self._runs: list[asyncio.Future[None]] = []

    def count_task(self, spec: pb.TaskSpec) -> None:
        key = (spec.task_id, spec.attempt)
        if key in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(key)
        self.tasks += 1

    def dirty(self, node: SimNode) -> None:
        """`node` has results to send: flush once this loop turn is over (batching)."""
        if not node.results[1:]:  # its first result this turn
            self._dirty.append(node)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        dirty, self._dirty = self._dirty, []
        for node in dirty:
            node.flush()

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGINT)."""
        self.stopping = True
        for node in self.nodes:
            node.stopping = True
        for run in self._runs:
            run.cancel()

    async def run(self) -> None:
        """Start the nodes and wait for all of them to stop."""
        # A channel of our own per group: a real daemon has its own TCP connection, and
        # gRPC would otherwise share one subchannel among identical channels.
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        channels: list[grpc.aio.Channel] = []
        width = len(str(self.count))
        lane = self.head_address.startswith(wire.TCP_PREFIX)
        for index in range(self.count):
            if index % self.nodes_per_channel == 0 and not lane:
                channels.append(open_channel(self.head_address, self.ca, options, aio=True))
            name = f"{self.prefix}{index:0{width}d}"
            self.nodes.append(SimNode(self, name, None if lane else channels[-1]))

        async def start(node: SimNode) -> None:
            if self.start_spread > 0:
                await asyncio.sleep(random.uniform(0, self.start_spread))
            await node.run()

        self._runs = [asyncio.ensure_future(start(node)) for node in self.nodes]
        try:
            await asyncio.gather(*self._runs, return_exceptions=True)
        finally:
            for ch in channels:
                await ch.close(grace=None)

    def summary(self) -> dict[str, Any]:
        return {"nodes": self.count, "tasks": self.tasks, "unique_tasks": len(self._seen),
                "duplicates": self.duplicates, "registrations": self.registrations,
                "retries": self.retries, "task_batches": self.task_batches,
                "result_batches": self.result_batches, "pid": os.getpid()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.node.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-address", required=True,
                        help="tcp:HOST:PORT, the head's node lane, or HOST:PORT, its gRPC")
    parser.add_argument("--cluster-id", required=True)
    parser.add_argument("--nodes", type=int, required=True, help="simulated nodes to run")
    parser.add_argument("--slots", type=int, default=64, help="cpus each node registers")
    parser.add_argument("--name-prefix", default="sim", help="node names: PREFIX0001, ...")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between beats")
    parser.add_argument("--head-timeout", type=float, default=30.0,
                        help="a node stops after not reaching the head this long (s)")
    parser.add_argument("--nodes-per-channel", type=int, default=1,
                        help="nodes sharing one gRPC channel (TCP connection); each node "
                             "always has a stream of its own")
    parser.add_argument("--start-spread", type=float, default=0.0,
                        help="start nodes at random times over this many seconds "
                             "(default: all at once)")
    parser.add_argument("--address", default="127.0.0.1", help="address nodes advertise")
    parser.add_argument("--block-id", default="")
    parser.add_argument("--secret-file", default="",
                        help="read the secret from this file (a cluster file or plain text)")
    parser.add_argument("--log-file", default="", help="log here (default: stderr, warnings)")
    return parser.parse_args(argv)


def read_secret(ns: argparse.Namespace) -> tuple[str, str]:
    """(secret, TLS CA) from $SHOAL_SECRET or --secret-file, as the real daemon reads them."""
    secret, extra = auth.read_secret(ns.secret_file)
    return secret, extra.get("tls_ca", "")


async def _main(ns: argparse.Namespace, secret: str, ca: str) -> dict[str, Any]:
    sim = Simulation(ns, secret, ca)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sim.stop)
    await sim.run()
    return sim.summary()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the nodes, then print their counters as one JSON line."""
    ns = parse_args(argv)
    if ns.nodes < 1:
        raise SystemExit("--nodes must be at least 1")
    secret, ca = read_secret(ns)
    if ns.log_file:
        logging.basicConfig(filename=ns.log_file, level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING)
    summary = asyncio.run(_main(ns, secret, ca))
    print(json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
