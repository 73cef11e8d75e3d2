"""``api.progress(futures)``: a progress bar while futures finish.

tqdm (``pip install 'shoal[progress]'``) draws it, on a terminal or, through
``tqdm.auto``, as a widget in Jupyter. Without tqdm, a one-line counter is rewritten in
place on a terminal, and printed every 10% elsewhere (a Slurm output file stays short).
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO


def _text_bar(total: int, desc: str, stream: TextIO) -> Any:
    tty = stream.isatty()
    start = time.monotonic()
    last = [-1, 0.0]   # tenth shown, when (a terminal is redrawn at most 10 times a second)

    def show(done: int, failed: int, final: bool = False) -> None:
        tenth = done * 10 // max(1, total)
        now = time.monotonic()
        if not final and (tenth == last[0] if not tty else now - last[1] < 0.1):
            return
        last[0], last[1] = tenth, now
        rate = done / max(1e-9, now - start)
        text = (f"{desc}: {done}/{total} done" + (f", {failed} failed" if failed else "") +
                f" ({rate:,.0f}/s)")
        if tty:
            stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final or tenth != 0:
            stream.write(text + "\n")
        stream.flush()

    return show


class Bar:
    """A bar of `total` steps (tqdm's when it is installed, else a line of counts), moved
    by :meth:`step` from the thread that waits and finished by :meth:`close`."""

    def __init__(self, total: int, desc: str = "tasks", file: TextIO | None = None,
                 done: int = 0, failed: int = 0) -> None:
        stream = file or sys.stderr
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self.done, self.failed = done, failed
        self._tqdm = tqdm(total=total, desc=desc, unit="task", file=stream,
                          initial=done) if tqdm is not None else None
        self._show = None if tqdm is not None else _text_bar(total, desc, stream)

    def step(self, fut: concurrent.futures.Future | None = None) -> None:
        """One more done (`fut`, counted as failed when it raised)."""
        self.done += 1
        failed = fut is not None and not fut.cancelled() and fut.exception() is not None
        self.failed += failed
        if self._tqdm is not None:
            if failed:
                self._tqdm.set_postfix(failed=self.failed, refresh=False)
            self._tqdm.update(1)
        else:
            assert self._show is not None
            self._show(self.done, self.failed)

    def close(self) -> None:
        """The final state (the bar stays on screen)."""
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._show is not None:
            self._show(self.done, self.failed, final=True)


def progress(futures: Iterable[concurrent.futures.Future], desc: str = "tasks",
             file: TextIO | None = None) -> list[concurrent.futures.Future]:
    """Show how many of `futures` are done until all are; returns them as a list.

    Failures are counted, not raised: look at each future afterwards. To wait for some of
    them with a bar, ``api.wait(futures, num_returns=n, progress=True)``.

    >>> futs = api.progress([simulate(s) for s in range(1000)])   # doctest: +SKIP
    simulate: 100%|██████████| 1000/1000 [00:12<00:00, 81.3task/s]
    """
    futs = list(futures)
    if not futs:
        return futs
    pending = []
    bar = Bar(len(futs), desc, file)
    for fut in futs:
        if fut.done():
            bar.step(fut)
        else:
            pending.append(fut)
    try:
        for fut in concurrent.futures.as_completed(pending):
            bar.step(fut)
    finally:
        bar.close()
    return futs
