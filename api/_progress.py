"""``api.progress(futures)``: a progress bar while futures finish.

tqdm (``pip install 'shoal[progress]'``) draws it, on a terminal or, through
``tqdm.auto``, as a widget in Jupyter. Without tqdm, a one-line counter is rewritten in
place on a terminal, and printed every 10% elsewhere (a Slurm output file stays short).
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO


def _text_bar(total: int, desc: str, stream: TextIO) -> Any:
    tty = stream.isatty()
    start = time.monotonic()
    last = [-1]

    def show(done: int, failed: int, final: bool = False) -> None:
        tenth = done * 10 // max(1, total)
        if not tty and not final and tenth == last[0]:
            return
        last[0] = tenth
        rate = done / max(1e-9, time.monotonic() - start)
        text = (f"{desc}: {done}/{total} done" + (f", {failed} failed" if failed else "") +
                f" ({rate:,.0f}/s)")
        if tty:
            stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final or tenth != 0:
            stream.write(text + "\n")
        stream.flush()

    return show


def progress(futures: Iterable[concurrent.futures.Future], desc: str = "tasks",
             file: TextIO | None = None) -> list[concurrent.futures.Future]:
    """Show how many of `futures` are done until all are; returns them as a list.

    Failures are counted, not raised: look at each future afterwards.

    >>> futs = api.progress([simulate(s) for s in range(1000)])   # doctest: +SKIP
    simulate: 100%|██████████| 1000/1000 [00:12<00:00, 81.3task/s]
    """
    futs = list(futures)
    stream = file or sys.stderr
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    done_event = threading.Event()
    lock = threading.Lock()
    counts = [0, 0]   # done, failed

    def finished(fut: concurrent.futures.Future) -> None:
        with lock:
            counts[0] += 1
            if not fut.cancelled() and fut.exception() is not None:
                counts[1] += 1
            if counts[0] == len(futs):
                done_event.set()

    if not futs:
        return futs
    for fut in futs:
        fut.add_done_callback(finished)
    if tqdm is not None:
        bar = tqdm(total=len(futs), desc=desc, unit="task", file=stream)
        shown = 0
        while True:
            ended = done_event.wait(0.1)
            with lock:
                done, failed = counts
            bar.update(done - shown)
            shown = done
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            if ended:
                break
        bar.close()
        return futs
    show = _text_bar(len(futs), desc, stream)
    while not done_event.wait(0.2):
        show(*counts)
    show(*counts, final=True)
    return futs
