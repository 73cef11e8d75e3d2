"""Files apps read and write: :class:`File`, and the :class:`DataFuture` of each output.

An app called with ``outputs=[api.File(...), ...]`` returns a future whose ``.outputs[i]``
is a :class:`DataFuture`: it resolves to the ``File`` when the app succeeds (to the app's
error when it fails). Passed to another app (in ``inputs=[...]`` or as any argument), a
DataFuture makes that app wait for the producer, and the app receives the ``File`` itself:
it pickles as "the producer's result, then this File", so the dependency is the ordinary
task dependency the head already tracks, and nothing new crosses the wire. As in Parsl,
nothing is staged: paths are on a file system both sides see (the shared one, on Slurm).
"""

from __future__ import annotations

import concurrent.futures
import os
import urllib.parse
from typing import Any


class File:
    """A file an app reads (``inputs=[...]``) or writes (``outputs=[...]``).

    Takes a path or a ``file://`` URL; the path is made absolute (against this process's
    working directory) at once, so it names the same file on every node of a shared file
    system. ``str(f)`` and ``os.fspath(f)`` give the path, so a bash app can write
    ``f"sort {inputs[0]} > {outputs[0]}"``::

        @api.bash_app
        def sort(inputs=(), outputs=()):
            return f"sort {inputs[0]} > {outputs[0]}"

        raw = api.File("data/raw.txt")                   # or "file:///scratch/raw.txt"
        fut = sort(inputs=[raw], outputs=[api.File("sorted.txt")])
        fut.outputs[0].result()                          # File('/abs/path/sorted.txt')

    Two Files are equal when their paths are; memoization keys use the path (not the
    file's contents).
    """

    __slots__ = ("path", "url")

    def __init__(self, path: str | os.PathLike[str] | File) -> None:
        if isinstance(path, File):
            path = path.path
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"api.File() takes a path or a file:// URL, got "
                            f"{type(path).__name__} {path!r}")
        text = os.fspath(path)
        if "://" in text:
            parsed = urllib.parse.urlparse(text)
            if parsed.scheme != "file":
                raise ValueError(f"api.File({text!r}): only local paths and file:// URLs are "
                                 f"supported, not {parsed.scheme}:// (stage the file onto a "
                                 "shared file system first)")
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"api.File({text!r}): a file:// URL names a path on this "
                                 f"machine's file system, not host {parsed.netloc!r}")
            text = urllib.parse.unquote(parsed.path)
        if not text:
            raise ValueError("api.File(''): the path is empty")
        #: The absolute path.
        self.path: str = os.path.abspath(text)
        #: The file's URL (``file://`` + path).
        self.url: str = "file://" + urllib.parse.quote(self.path)

    @property
    def filepath(self) -> str:
        """The absolute path (Parsl's name for it)."""
        return self.path

    @property
    def filename(self) -> str:
        """The last part of the path."""
        return os.path.basename(self.path)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"File({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("shoal.File", self.path))

    def __reduce__(self) -> tuple[Any, ...]:
        return (File, (self.path,))


class DataFuture(concurrent.futures.Future):
    """An output file of an app: resolves to its :class:`File` once the app succeeded.

    ``fut.outputs[i]`` of an app called with ``outputs=[...]``. Pass it to another app
    (``inputs=[fut.outputs[0]]``) to make that app wait for the file; it receives the
    ``File``. ``.result()`` raises the producer's error if the producer failed.
    ``.filepath`` is known at once.
    """

    def __init__(self, parent: Any, file: File) -> None:
        super().__init__()
        self._parent = parent
        self._file = file
        parent.when_done(self._parent_done)  # (on the delivering thread: it only sets us)

    def _parent_done(self, parent: Any) -> None:
        # The producer's own state, without loading a stored result just to know it.
        err = concurrent.futures.Future.exception(parent, 0)
        if err is not None:
            self.set_exception(err)
        else:
            self.set_result(self._file)

    def _invoke_callbacks(self) -> None:
        # As for AppFutures: user callbacks run on the session's callback thread, never on
        # the thread delivering results.
        callbacks: list[Any] = self._done_callbacks
        runner = getattr(getattr(self._parent, "_client", None), "callbacks", None)
        if callbacks and runner is not None:
            self._done_callbacks: list[Any] = []
            runner.run(self, callbacks)
        else:
            super()._invoke_callbacks()  # type: ignore[misc]

    @property
    def parent(self) -> Any:
        """The future of the app that writes this file."""
        return self._parent

    @property
    def file_obj(self) -> File:
        """The :class:`File` (known before the app has run)."""
        return self._file

    @property
    def filepath(self) -> str:
        """The file's absolute path."""
        return self._file.path

    @property
    def filename(self) -> str:
        """The last part of the file's path."""
        return self._file.filename

    @property
    def tid(self) -> int:
        """The producing task's id."""
        return int(self._parent.task_id)

    def __repr__(self) -> str:
        return f"<DataFuture {self._file.path} {self._state.lower()}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # The producer's future pickles as a dependency (the consumer waits for it); the
        # consumer then gets the File.
        return (_file_after, (self._parent, self._file))


def _file_after(_producer_result: Any, file: File) -> File:
    return file


def output_futures(parent: Any, outputs: Any) -> list[DataFuture]:
    """The DataFutures of an app call's ``outputs=``: one per entry when the entries are
    Files (TypeError naming one that is not a File or a path, among Files). An
    ``outputs`` argument holding no File at all is the function's own business (a
    parameter that happens to have the name) and gets none."""
    if not isinstance(outputs, list | tuple) or \
            not any(isinstance(item, File | DataFuture) for item in outputs):
        return []
    out = []
    for i, item in enumerate(outputs):
        if isinstance(item, DataFuture):
            item = item.file_obj
        elif isinstance(item, str | os.PathLike) and not isinstance(item, File):
            item = File(item)
        if not isinstance(item, File):
            raise TypeError(f"outputs[{i}] is {type(item).__name__} {item!r}; expected an "
                            "api.File (or a path), as the other outputs are")
        out.append(DataFuture(parent, item))
    return out
