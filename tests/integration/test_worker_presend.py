"""A real worker process, driven over its socket as its daemon drives it: tasks sent ahead
(``RunAfter``) start right after their input with the value the worker just made, or are
dropped by the rule both sides keep (cluster.policy.staging.worker_runs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from helpers import ROOT

from cluster.common import serialization, wire
from cluster.common.messages import Alloc, AllocReply, Done, Exit, Fn, Ready, Run, RunAfter
from cluster.common.serialization import ObjectRef
from cluster.common.status import APP_ERROR, OK


class WorkerProcess:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        ours.settimeout(60)  # (a silent worker fails the test instead of hanging it)
        path = os.pathsep.join([ROOT, os.path.dirname(__file__), os.path.join(ROOT, "tests")])
        self.proc = subprocess.Popen([sys.executable, "-m", "cluster.worker",
                                      str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                                     env={**os.environ, "PYTHONPATH": path}, cwd=ROOT)
        theirs.close()
        self.buf = bytearray()
        self.frames: list[Any] = []
        assert type(self.read()) is Ready

    def send(self, message: tuple) -> None:
        self.sock.sendall(wire.encode(message))

    def read(self) -> Any:
        while not self.frames:
            data = self.sock.recv(1 << 16)
            assert data, "the worker exited"
            self.buf += data
            self.frames.extend(wire.decode(b) for b in wire.split(self.buf))
        return self.frames.pop(0)

    def close(self) -> None:
        self.send(Exit())
        self.proc.wait(timeout=30)
        self.sock.close()


def _step(x: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x + 1


def _big(x: int) -> bytes:
    return b"x" * (4 << 20)


def _fields(task_id: int, fn: bytes, *args: Any) -> tuple:
    deps: list[int] = []
    blob = serialization.dumps((args, {}), deps)
    return (task_id, fn, 0, "step", blob, {}, None, None, None, ROOT, None)


def test_a_task_sent_ahead_starts_with_the_value_just_made():
    w = WorkerProcess()
    try:
        w.send(Fn(b"step", serialization.dumps_function(_step)))
        w.send(Run(*_fields(1, b"step", 40)))
        w.send(RunAfter(1, _fields(2, b"step", ObjectRef(1))))
        w.send(RunAfter(2, _fields(3, b"step", ObjectRef(2))))
        done = [w.read() for _ in range(3)]
        assert [type(d) for d in done] == [Done] * 3
        assert [(d.task_id, d.status) for d in done] == [(1, OK), (2, OK), (3, OK)]
        assert serialization.loads(done[2].data) == 43
    finally:
        w.close()


def test_what_follows_a_failure_is_dropped_down_the_chain():
    w = WorkerProcess()
    try:
        w.send(Fn(b"step", serialization.dumps_function(_step)))
        w.send(Run(*_fields(1, b"step", -5)))
        w.send(RunAfter(1, _fields(2, b"step", ObjectRef(1))))
        w.send(RunAfter(2, _fields(3, b"step", ObjectRef(2))))
        w.send(Run(*_fields(4, b"step", 1)))   # what the daemon sends next: it runs
        done = [w.read() for _ in range(2)]
        assert [(d.task_id, d.status) for d in done] == [(1, APP_ERROR), (4, OK)]
    finally:
        w.close()


def test_a_value_too_big_to_travel_inline_is_not_followed(tmp_path):
    # (Its store file is sealed by the daemon first: the daemon starts the next link.)
    w = WorkerProcess()
    try:
        w.send(Fn(b"big", serialization.dumps_function(_big)))
        w.send(Fn(b"step", serialization.dumps_function(_step)))
        w.send(Run(*_fields(1, b"big", 0)))
        alloc = w.read()
        assert type(alloc) is Alloc   # room for its result in the node's store
        path = tmp_path / "object"
        path.touch()
        w.send(AllocReply(alloc.ref, str(path), ""))
        w.send(RunAfter(1, _fields(2, b"step", ObjectRef(1))))
        w.send(Run(*_fields(3, b"step", 1)))
        done = [w.read() for _ in range(2)]
        assert [(d.task_id, d.status) for d in done] == [(1, OK), (3, OK)]
        assert done[0].data[0] == "stored"
    finally:
        w.close()
