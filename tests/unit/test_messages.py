"""Every daemon/worker/direct-call message survives the wire (encode, split, decode) with
its type and fields, and travels as a plain tagged tuple. No processes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import typing

import pytest

from cluster.common import messages, wire
from cluster.common.messages import (  # dynamic workflows (cluster/*/nested.py)
    ActorCall,
    ActorCreate,
    Alloc,
    AllocReply,
    Blocked,
    Call,
    CallResult,
    Created,
    Denied,
    DirectAck,
    DirectCall,
    DirectReply,
    DirectTask,
    Done,
    Exit,
    Fn,
    HandBack,
    Log,
    NestedEnd,
    NestedIn,
    NestedOut,
    Pull,
    Ready,
    Run,
    RunAfter,
    Unblocked,
)

SAMPLES = [
    Fn(b"f" * 16, b"cloudpickled"),
    Run(1 << 40, b"f" * 16, 0, "noop", b"args", {7: b"v", 8: ("path", "/dev/shm/x")}, "0,1",
        ("out.txt", "w"), None, "/tmp", {"A": "1"}),
    Run(2, b"f", 1, "bash", 7, {}, None, None, None, "", None),
    RunAfter(2, (3, b"f", 0, "inc", b"args", {}, None, None, None, "", None)),
    RunAfter(0, (4, b"f", 0, "noop", b"args", {}, None, None, None, "", None)),  # prefetched
    ActorCreate(3, b"c", "Counter", b"args", {}, None, "/tmp", None, 2, b"secret", "/run",
                "127.0.0.1"),
    ActorCall(4, "add", b"args", {}),
    CallResult(5, 10, b"", "the actor is dead"),
    AllocReply(6, "/dev/shm/obj", ""),
    Exit(),
    Ready(1234),
    Done(7, 0, ("stored", "/dev/shm/obj", 1 << 20, [9]), 0.25, ""),
    Done(8, 1, b"err", 0.0, "boom"),
    Created(9, 0, b"", 0.1, "", "host|/run/a9.sock|127.0.0.1:5000"),
    Log(10, "noop", "hello\n", True),
    Call(11, 12, "add", b"args", [13]),
    Alloc(14, 1 << 30),
    DirectCall(15, "add", b"args"),
    DirectReply(15, 0, b"value", ""),
    DirectTask(16, b"fn-id", b"", "square", b"args", "/tmp"),
    DirectAck(16),
    Denied(),
    NestedOut(b"driver batch"),
    NestedIn(b"head batch"),
    NestedEnd(16, True),
    Pull(18, 19, ["127.0.0.1:5000"]),
    Blocked(17),
    Blocked(17, False),
    HandBack([20, 21]),
    Unblocked(17),
]


def test_every_type_is_sampled():
    assert {type(m) for m in SAMPLES} == set(messages.TYPES.values())
    assert set(typing.get_args(messages.Message)) == set(messages.TYPES.values())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_the_wire(message):
    buf = bytearray(wire.encode(message))
    bodies = wire.split(buf)
    assert len(bodies) == 1 and not buf
    raw = pickle.loads(bodies[0])
    # Plain tuple on the wire (fast to pickle), led by the tag; no class reference.
    assert type(raw) is tuple and raw == (type(message).TAG, *message)
    back = wire.decode(bodies[0])
    assert type(back) is type(message)
    assert back == message and back._asdict() == message._asdict()


def test_frames_split_in_order_across_partial_reads():
    data = b"".join(wire.encode(m) for m in SAMPLES)
    buf = bytearray()
    got = []
    for i in range(0, len(data), 7):  # arrive 7 bytes at a time
        buf += data[i : i + 7]
        got += [wire.decode(body) for body in wire.split(buf)]
    assert got == SAMPLES and [type(m) for m in got] == [type(m) for m in SAMPLES]


def test_unknown_tag_is_refused():
    with pytest.raises(KeyError):
        wire.decode(pickle.dumps(("no-such-message", 1)))


def test_tags_keep_the_old_wire_strings():
    # The frames' bytes did not change when the messages got types.
    assert pickle.loads(wire.encode(Denied())[4:]) == ("denied",)
    assert pickle.loads(wire.encode(Exit())[4:]) == ("exit",)
    assert pickle.loads(wire.encode(DirectCall(1, "m", b""))[4:]) == ("c", 1, "m", b"")


def test_messages_module_imports_nothing_heavy():
    code = ("import sys, cluster.common.wire, cluster.common.status, cluster.common.errors; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google', 'asyncio')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


class _Transport:
    """Enough of an asyncio transport for FrameProtocol: records a close."""

    def __init__(self) -> None:
        self.closed = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        pass


def _protocol(got: list, lost: list | None = None,
              recv_size: int = wire.RECV_SIZE) -> tuple[wire.FrameProtocol, _Transport]:
    p = wire.FrameProtocol(got.append, lambda: (lost or []).append(True), recv_size=recv_size)
    t = _Transport()
    p.connection_made(t)
    return p, t


def _feed_buffered(p: wire.FrameProtocol, data: bytes, step: int) -> None:
    """As asyncio's buffered path does: recv_into what get_buffer returns."""
    pos = 0
    while pos < len(data):
        room = p.get_buffer(-1)
        n = min(step, len(room), len(data) - pos)
        room[:n] = data[pos:pos + n]
        del room
        p.buffer_updated(n)
        pos += n


@pytest.mark.parametrize("recv_size", [wire.RECV_SIZE, wire.NODE_RECV_SIZE])
@pytest.mark.parametrize("step", [1, 3, 7, 4096, 1 << 20])
def test_buffered_reads_give_every_frame_in_order(step, recv_size):
    # Frames of every size around the buffer's: small ones, one bigger than the whole
    # receive buffer (it must grow for it, then shrink back), small ones after it; and
    # with the node lane's small first buffer, one between it and RECV_SIZE.
    big = Done(1, 0, b"x" * (3 * wire.RECV_SIZE + 5), 0.0, "")
    middle = Done(2, 0, b"y" * (3 * wire.NODE_RECV_SIZE), 0.0, "")
    sent = list(SAMPLES) + [middle, big] + list(SAMPLES)
    data = b"".join(wire.encode(m) for m in sent)
    got: list = []
    p, t = _protocol(got, recv_size=recv_size)
    assert len(p.get_buffer(-1)) == recv_size
    _feed_buffered(p, data, step)
    assert got == sent
    assert not t.closed
    assert len(p.get_buffer(-1)) == recv_size  # the big frame's buffer was given back


def test_plain_data_received_uses_the_same_parser():
    data = b"".join(wire.encode(m) for m in SAMPLES)
    got: list = []
    p, _ = _protocol(got)
    for i in range(0, len(data), 5):
        p.data_received(data[i:i + 5])
    assert got == list(SAMPLES)


def test_a_malformed_or_oversized_frame_closes_the_connection():
    got: list = []
    p, t = _protocol(got)
    _feed_buffered(p, wire.frame(b"not a pickle"), 4096)
    assert t.closed and got == []
    p, t = _protocol(got)
    _feed_buffered(p, wire.HEADER.pack(wire.MAX_FRAME + 1), 4096)
    assert t.closed and got == []


def test_a_first_header_above_its_limit_closes_before_any_room_is_made():
    got: list = []
    p, t = _protocol(got)
    p.max_first_frame = 4096
    _feed_buffered(p, wire.HEADER.pack(1 << 30) + b"x" * 100, 4096)
    assert t.closed and got == []
    assert len(p._rbuf) == wire.RECV_SIZE, "no room was made for the announced frame"
    # A first frame at the limit passes, and so do larger ones after it, also when they
    # arrive in the same read as the first.
    for step in (1000, 1 << 20):
        got = []
        p = wire.FrameProtocol(got.append, lambda: None, decode=bytes)
        t = _Transport()
        p.connection_made(t)
        p.max_first_frame = 4096
        _feed_buffered(p, wire.frame(b"s" * 4096) + wire.frame(b"y" * 100_000), step)
        assert got == [b"s" * 4096, b"y" * 100_000] and not t.closed


def test_the_asyncio_protocol_is_a_buffered_one():
    import asyncio

    from cluster.common.streams import AsyncFrameProtocol

    assert isinstance(AsyncFrameProtocol(print, print), asyncio.BufferedProtocol)
