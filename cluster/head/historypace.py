"""When the history's writer writes (see :mod:`cluster.head.historywriter`): it reads the
head's frames as they come (cheap: a read and ``marshal.loads``, ~0.5 us a task), and
while other work leaves less than one CPU free (a burst of short tasks: the head, its
workers and the driver) it keeps them for up to :data:`DEFER_SECONDS` before folding and
writing them (~7 us a task). A short burst then does not share its CPUs with the history;
a long one, or a machine others keep busy, has it written every DEFER_SECONDS all the
same, so the history never lags more than that (plus the rows held until their tasks
end). Frames read are the writer's: a head that crashes meanwhile loses none of them.

This is what SCHED_IDLE would do, bounded: an idle-class (or nice 19) writer on a machine
others kept busy (load 9 on 2 cores) took over a minute to write 25 tasks.
"""

from __future__ import annotations

import marshal
import os
import select
import struct
import time
from typing import Any

#: The longest the writer keeps frames unwritten while the CPUs are busy.
DEFER_SECONDS = 2.0
#: Or at most this many frames (the head sends ~10 a second, of up to a few thousand tasks).
DEFER_FRAMES = 50
#: The CPUs are busy when other processes leave less than this many CPUs free: a no-op
#: burst on 2 CPUs keeps ~1.05 of them busy in bursts of its own (driver, head, workers),
#: and a writer in the gaps still collides with them.
FREE_CPUS = 1.0
#: The shortest window the CPUs' use is measured over.
WINDOW = 0.1


class CpuWatch:
    """Whether the other processes leave less than FREE_CPUS free (from /proc/stat,
    less this process's own CPU time); never busy where /proc/stat cannot be read."""

    def __init__(self, stat: str = "/proc/stat") -> None:
        self.stat = stat
        self._tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._cpus = 1
        try:
            with open(stat, "rb") as f:
                self._cpus = max(1, sum(1 for line in f if line[:3] == b"cpu"
                                        and line[3:4].isdigit()))
        except OSError:
            pass
        self._last = self._sample()
        self._busy = False

    def _sample(self) -> tuple[float, float, float, float] | None:
        """(when, all CPUs' seconds, their idle seconds, this process's CPU seconds)."""
        try:
            with open(self.stat, "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 5 or fields[0] != b"cpu":
            return None
        ticks = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
        own = os.times()
        return (time.monotonic(), sum(ticks) / self._tick,
                (ticks[3] + ticks[4]) / self._tick, own.user + own.system)

    def busy(self) -> bool:
        """Whether others left less than FREE_CPUS free since the last look (at least
        WINDOW ago; within it, the last answer)."""
        if self._last is None or time.monotonic() - self._last[0] < WINDOW:
            return self._busy
        now = self._sample()
        if now is None:
            return False
        total = now[1] - self._last[1]
        if total > 0:
            others = total - (now[2] - self._last[2]) - (now[3] - self._last[3])
            self._busy = total - others < FREE_CPUS * total / self._cpus
        self._last = now
        return self._busy


class FrameReader:
    """Frames (a 4-byte length and a marshalled value) from a file descriptor, read as
    they arrive (see :func:`cluster.head.historywriter.encode_frame`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buf = bytearray()

    def frames(self, timeout: float | None) -> list[Any]:
        """The complete frames read, waiting up to `timeout` seconds (None: until input
        comes) when none is ready."""
        out = self._parse()
        if out or self.eof:
            return out
        ready, _, _ = select.select([self.fd], [], [], timeout)
        while ready and len(self._buf) < 16 << 20:
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
                break
            self._buf += data
            ready, _, _ = select.select([self.fd], [], [], 0)
        return self._parse()

    def _parse(self) -> list[Any]:
        buf = self._buf
        out = []
        pos = 0
        view = memoryview(buf)
        try:
            while len(buf) - pos >= 4:
                n = struct.unpack_from("<I", buf, pos)[0]
                if len(buf) - pos - 4 < n:
                    break
                out.append(marshal.loads(view[pos + 4:pos + 4 + n]))
                pos += 4 + n
        finally:
            view.release()
        del buf[:pos]
        return out


def paced(fd: int, write: Any, watch: CpuWatch | None = None) -> bool:
    """Read frames from `fd` and hand them to `write(frames)` (a list, oldest first) as
    the module doc says, until a closing frame (True) or end of input (False)."""
    reader = FrameReader(fd)
    watch = watch or CpuWatch()
    kept: list[Any] = []
    since = 0.0
    closed = False
    while not closed and not reader.eof:
        for frame in reader.frames(WINDOW if kept else None):
            if frame == "close":
                closed = True
                break
            if not kept:
                since = time.monotonic()
            kept.append(frame)
        if kept and (closed or reader.eof or len(kept) >= DEFER_FRAMES or
                     time.monotonic() - since >= DEFER_SECONDS or not watch.busy()):
            write(kept)
            kept = []
    if kept:
        write(kept)
    return closed
