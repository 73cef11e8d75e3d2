"""What bounds shoal's per-task costs on this machine: microbenchmarks of the floor.

    python scripts/bench_bounds.py [--quick] [--json FILE]

Each figure is the cost of one mechanism the task path uses, with no shoal logic around
it, so the per-task figures of scripts/bench.py can be read against them (README,
"Benchmarks", "What bounds the per-task figures"). CPU figures are per process and count
every thread (``/proc/<pid>/task/*/schedstat``, nanoseconds: no 10 ms tick rounding).

- ``unix_rt``: a ping-pong of small frames between two processes over a Unix socket,
  both blocking: the latency of one wake-up each way, and each side's CPU per round trip.
- ``asyncio_rt``: the same with the serving side an asyncio protocol (as the head's and
  the daemon's sockets are).
- ``hops4_rt``: driver -> asyncio relay -> blocking worker -> relay -> driver, no logic:
  the floor of a sync task round trip through a head (shoal's local path has these hops).
- ``handoff_rt``: as ``unix_rt`` but the client's answer is read by a reader thread and
  handed to the waiting thread through a ``concurrent.futures.Future`` (what a driver
  does): the price of that one extra thread wake-up.
- ``grpc_rt``: a bidirectional gRPC-aio stream ping-pong of small byte messages between
  two processes (no protobuf): one gRPC message each way.
- ``grpc_recv_us`` / ``grpc_send_us``: CPU of the receiving / sending process per
  message when one side streams many small messages to the other (gRPC-aio both ends).
- ``pb_parse_result_us`` / ``pb_parse_spec_us``: one TaskResult / TaskSpec of a no-op
  task parsed out of a batch (upb protobuf); ``pb_build_spec_us``: building one spec.
- ``future_us``: one ``concurrent.futures.Future`` made, resolved and read.
- ``pickle_args_us``: pickling the ``((), {})`` of a call with no arguments through
  shoal's ref-collecting pickler, against plain ``pickle.dumps``.
- ``driver_submit_us`` / ``driver_take_us`` / ``driver_results_us``: the driver's own
  Python per no-op task (an app call; its share of a batch; its result delivered and
  read), in this process with no transport: what is left of ``driver_cpu_task_us`` once
  the messages and wake-ups are taken out.
- ``worker_task_us``: a worker's own Python per no-op task (CPU of its thread).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import pickle
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

FRAME = b"x" * 64


def cpu_ns(pid: int | None = None) -> int:
    """CPU time of every thread of process `pid` (this one by default), in ns."""
    pid = pid or os.getpid()
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _echo_blocking(sock: socket.socket) -> None:
    try:
        while True:
            sock.sendall(_recv_exact(sock, len(FRAME)))
    except (EOFError, OSError):
        pass


def _echo_asyncio(sock: socket.socket, relay: socket.socket | None = None) -> None:
    """Serve `sock` from an asyncio protocol: echo, or forward to `relay` and back."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            fronts.append(self)

        def data_received(self, data: bytes) -> None:
            if relay_proto is not None:
                relay_proto.transport.write(data)
            else:
                self.transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            loop.stop()

    class Back(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            fronts[0].transport.write(data)

    loop = asyncio.new_event_loop()
    relay_proto: Back | None = None
    fronts: list[Echo] = []
    if relay is not None:
        _, relay_proto = loop.run_until_complete(loop.create_connection(Back, sock=relay))
    loop.run_until_complete(loop.create_connection(Echo, sock=sock))
    loop.run_forever()


def _fork(target: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            target()
        finally:
            os._exit(0)
    return pid


def _ping(sock: socket.socket, n: int, children: list[int],
          recv: Callable[[], bytes] | None = None) -> dict[str, float]:
    read = recv or (lambda: _recv_exact(sock, len(FRAME)))
    for _ in range(200):
        sock.sendall(FRAME)
        read()
    before = [cpu_ns(p) for p in children]
    me0, t0 = cpu_ns(), time.perf_counter()
    for _ in range(n):
        sock.sendall(FRAME)
        read()
    elapsed = time.perf_counter() - t0
    out = {"rt_us": elapsed / n * 1e6, "cpu_client_us": (cpu_ns() - me0) / n / 1e3}
    for i, (pid, b) in enumerate(zip(children, before, strict=True)):
        out[f"cpu_peer{i}_us"] = (cpu_ns(pid) - b) / n / 1e3
    return out


def _finish(sock: socket.socket, pids: list[int]) -> None:
    sock.close()
    for pid in pids:
        os.waitpid(pid, 0)


def _pair_rt(n: int, echo: Callable[[socket.socket], Any]) -> dict[str, float]:
    """Ping-pong with one forked process serving its end of a socketpair with `echo`."""
    a, b = socket.socketpair()
    pid = _fork(lambda: (a.close(), echo(b)))
    b.close()
    out = _ping(a, n, [pid])
    _finish(a, [pid])
    return out


def unix_rt(n: int) -> dict[str, float]:
    return _pair_rt(n, _echo_blocking)


def asyncio_rt(n: int) -> dict[str, float]:
    return _pair_rt(n, _echo_asyncio)


def hops4_rt(n: int) -> dict[str, float]:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    worker = _fork(lambda: (a.close(), b.close(), c.close(), _echo_blocking(d)))
    d.close()
    relay = _fork(lambda: (a.close(), _echo_asyncio(b, c)))
    b.close()
    c.close()
    out = _ping(a, n, [relay, worker])
    out["cpu_relay_us"] = out.pop("cpu_peer0_us")
    out["cpu_worker_us"] = out.pop("cpu_peer1_us")
    _finish(a, [relay, worker])
    return out


def handoff_rt(n: int) -> dict[str, float]:
    a, b = socket.socketpair()
    pid = _fork(lambda: (a.close(), _echo_blocking(b)))
    b.close()
    slot: list[concurrent.futures.Future] = []
    ready = threading.Semaphore(0)

    def reader() -> None:
        try:
            while True:
                ready.acquire()
                data = _recv_exact(a, len(FRAME))
                slot.pop().set_result(data)
        except (EOFError, OSError):
            pass

    threading.Thread(target=reader, daemon=True).start()

    def recv() -> bytes:
        return fut.result()

    def send_and_wait() -> bytes:
        nonlocal fut
        fut = concurrent.futures.Future()
        slot.append(fut)
        ready.release()
        return fut

    fut: concurrent.futures.Future = concurrent.futures.Future()
    orig_sendall = a.sendall

    class Sock:
        def sendall(self, data: bytes) -> None:
            send_and_wait()
            orig_sendall(data)

    out = _ping(Sock(), n, [pid], recv)  # type: ignore[arg-type]
    a.shutdown(socket.SHUT_RDWR)
    _finish(a, [pid])
    return out


# ---- gRPC ---------------------------------------------------------------------------
_IDENT = (lambda b: b, lambda b: b)


def _grpc_server_main(port_file: str, count: int) -> None:
    import grpc

    async def echo(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    async def sink(requests: Any, context: Any) -> Any:
        n = 0
        t0 = cpu_ns()
        async for _ in requests:
            n += 1
            if n == count:
                yield json.dumps({"cpu_us": (cpu_ns() - t0) / n / 1e3}).encode()
                n, t0 = 0, cpu_ns()

    async def source(requests: Any, context: Any) -> Any:
        async for message in requests:
            t0 = cpu_ns()
            for _ in range(count):
                yield message
            yield json.dumps({"cpu_us": (cpu_ns() - t0) / count / 1e3}).encode()

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Echo": grpc.stream_stream_rpc_method_handler(echo, *_IDENT),
            "Sink": grpc.stream_stream_rpc_method_handler(sink, *_IDENT),
            "Source": grpc.stream_stream_rpc_method_handler(source, *_IDENT),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("b.B", handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(port_file + ".tmp", port_file)
        await server.wait_for_termination()

    asyncio.run(main())


def grpc_figures(n: int) -> dict[str, float]:
    import tempfile

    port_file = os.path.join(tempfile.mkdtemp(prefix="shoal-bounds-"), "port")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--grpc-server",
                             port_file, str(n)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if time.monotonic() > deadline:
                raise RuntimeError("the gRPC benchmark server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            port = int(f.read())
        out = asyncio.run(_grpc_client(port, n, proc.pid))
        out.update(_grpc_sync_client(port, n, proc.pid))
        return out
    finally:
        proc.kill()
        proc.wait()


async def _grpc_client(port: int, n: int, server_pid: int) -> dict[str, float]:
    import grpc

    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.stream_stream("/b.B/Echo", *_IDENT)
        call = echo()
        for _ in range(200):
            await call.write(FRAME)
            await call.read()
        s0, c0, t0 = cpu_ns(server_pid), cpu_ns(), time.perf_counter()
        for _ in range(n):
            await call.write(FRAME)
            await call.read()
        elapsed = time.perf_counter() - t0
        out["grpc_rt_us"] = elapsed / n * 1e6
        out["grpc_rt_cpu_client_us"] = (cpu_ns() - c0) / n / 1e3
        out["grpc_rt_cpu_server_us"] = (cpu_ns(server_pid) - s0) / n / 1e3
        await call.done_writing()
        # The server receives n messages: its CPU per message received.
        sink = channel.stream_stream("/b.B/Sink", *_IDENT)()
        c0 = cpu_ns()
        for _ in range(n):
            await sink.write(FRAME)
        out["grpc_send_us"] = (cpu_ns() - c0) / n / 1e3
        out["grpc_recv_us"] = json.loads(await sink.read())["cpu_us"]
        await sink.done_writing()
        # The server sends n messages: the client's CPU per message received.
        source = channel.stream_stream("/b.B/Source", *_IDENT)()
        await source.write(FRAME)
        c0 = cpu_ns()
        for _ in range(n):
            await source.read()
        out["grpc_recv_client_us"] = (cpu_ns() - c0) / n / 1e3
        out["grpc_send_server_us"] = json.loads(await source.read())["cpu_us"]
        await source.done_writing()
    return out


def _grpc_sync_client(port: int, n: int, server_pid: int) -> dict[str, float]:
    """The same with grpc's blocking API (a thread per stream, no event loop)."""
    import queue

    import grpc

    out: dict[str, float] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        responses = channel.stream_stream("/b.B/Echo", *_IDENT)(iter(requests.get, None))
        for _ in range(200):
            requests.put(FRAME)
            next(responses)
        c0, t0 = cpu_ns(), time.perf_counter()
        for _ in range(n):
            requests.put(FRAME)
            next(responses)
        elapsed = time.perf_counter() - t0
        out["grpc_sync_rt_us"] = elapsed / n * 1e6
        out["grpc_sync_rt_cpu_client_us"] = (cpu_ns() - c0) / n / 1e3
        requests.put(None)
        requests = queue.SimpleQueue()
        source = channel.stream_stream("/b.B/Source", *_IDENT)(iter(requests.get, None))
        requests.put(FRAME)
        next(source)  # (the first message: the stream is up)
        c0 = cpu_ns()
        for _ in range(n - 1):
            next(source)
        out["grpc_sync_recv_client_us"] = (cpu_ns() - c0) / (n - 1) / 1e3
        next(source)
        requests.put(None)
    return out


# ---- in-process costs -----------------------------------------------------------------
def _per_call(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def inproc_figures(n: int) -> dict[str, float]:
    from cluster.common import serialization
    from cluster.common.protocol import pb

    spec = pb.TaskSpec(task_id=1 << 40, fn_id=b"f" * 16, name="noop",
                       args=serialization.dumps(((), {})), kind=pb.PYTHON, cwd="/home/user",
                       num_nodes=1, ranks_per_node=1)
    spec.resources.cpus = 1.0
    batch = pb.DriverToHead(submit=[spec] * 200).SerializeToString()
    result = pb.TaskResult(task_id=1 << 40, status=pb.OK, data=pickle.dumps(None, 5),
                           node="node0", run_seconds=1e-5, worker_pid=1234)
    results = pb.HeadToDriver(results=[result] * 14).SerializeToString()
    resources = spec.resources
    m = max(1, n // 20)
    out = {
        "pb_parse_spec_us": _per_call(lambda: pb.DriverToHead.FromString(batch), m) / 200,
        "pb_parse_result_us": _per_call(lambda: pb.HeadToDriver.FromString(results), m) / 14,
        "pb_build_spec_us": _per_call(lambda: pb.TaskSpec(
            task_id=1, fn_id=b"f" * 16, name="noop", args=b"x" * 24, deps=[],
            resources=resources, max_retries=0, walltime=0.0, kind=pb.PYTHON,
            cwd="/home/user", num_nodes=1, ranks_per_node=1, args_ref=0), n),
    }

    def future() -> Any:
        f: concurrent.futures.Future = concurrent.futures.Future()
        f.set_result(None)
        return f.result()

    out["future_us"] = _per_call(future, n)
    out["pickle_args_us"] = _per_call(lambda: serialization.dumps(((), {}), []), n)
    out["pickle_plain_us"] = _per_call(lambda: pickle.dumps(((), {}), 5), n)
    return out


def driver_python(n: int) -> dict[str, float]:
    """The driver's own Python per no-op task, with no transport: a submission (the app
    call, its spec and future), taking the batch, and delivering its result."""
    from api import _apps, _session
    from api._client import Client
    from cluster.common.protocol import pb

    class Held:
        target = "none"

        def flush(self) -> None:
            pass

        def flush_soon(self) -> None:
            pass

    client = Client(["unix:/nonexistent"], "secret")
    client._transport = Held()
    client.driver_id = 1
    saved = _session._state["client"]
    _session._state["client"] = client
    try:
        def noop() -> None:
            return None

        app = _apps.python_app(noop)
        [app() for _ in range(1000)]  # (warm: the function is pickled once)
        client._take()
        t0 = time.process_time()
        futs = [app() for _ in range(n)]
        t1 = time.process_time()
        client._take()
        t2 = time.process_time()
        data = pickle.dumps(None, 5)
        batches = [pb.HeadToDriver(results=[
            pb.TaskResult(task_id=f.task_id, status=pb.OK, data=data, node="n",
                          run_seconds=1e-5, worker_pid=1) for f in futs[i:i + 14]
        ]).SerializeToString() for i in range(0, n, 14)]
        t3 = time.process_time()
        for batch in batches:
            client._on_message(pb.HeadToDriver.FromString(batch))
        for f in futs:
            f.result()
        t4 = time.process_time()
    finally:
        _session._state["client"] = saved
        client._releases.clear()
    return {"driver_submit_us": (t1 - t0) / n * 1e6, "driver_take_us": (t2 - t1) / n * 1e6,
            "driver_results_us": (t4 - t3) / n * 1e6}


def worker_python(n: int) -> dict[str, float]:
    """A worker's own Python per no-op task (read from a socket already holding it, run,
    report), without the wake-ups between processes."""
    from cluster.common.messages import Run
    from cluster.worker.worker import Worker

    ours, theirs = socket.socketpair()
    worker = Worker(theirs)

    def noop() -> None:
        return None

    from cluster.common import serialization

    worker.functions[b"f"] = serialization.dumps_function(noop)
    message = Run(1, b"f", 0, "noop", pickle.dumps(((), {}), 5), {}, None, None, None,
                  os.getcwd(), None)

    def drain() -> None:
        try:
            while ours.recv(1 << 16):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    for _ in range(500):
        worker.run(message)
    t0 = time.thread_time()
    for _ in range(n):
        worker.run(message)
    elapsed = time.thread_time() - t0
    theirs.close()
    ours.close()
    return {"worker_task_us": elapsed / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default="")
    parser.add_argument("--grpc-server", nargs=2, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.grpc_server:
        _grpc_server_main(ns.grpc_server[0], int(ns.grpc_server[1]))
        return
    n = 2_000 if ns.quick else 10_000
    reps = 2 if ns.quick else ns.reps
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, fn in (("unix", unix_rt), ("asyncio", asyncio_rt), ("hops4", hops4_rt),
                         ("handoff", handoff_rt)):
            for key, value in fn(n).items():
                samples.setdefault(f"{name}_{key}", []).append(value)
        figures = {**grpc_figures(n), **inproc_figures(n * 10), **driver_python(n * 2),
                   **worker_python(n)}
        for key, value in figures.items():
            samples.setdefault(key, []).append(value)
    load = os.getloadavg()
    print(f"median (min-max) of {reps}, {n} round trips or messages each; "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores")
    for key, values in samples.items():
        print(f"  {key:<32} {statistics.median(values):9.2f}  "
              f"({min(values):.2f}-{max(values):.2f})")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"samples": samples, "load": load}, f, indent=1)


if __name__ == "__main__":
    main()
