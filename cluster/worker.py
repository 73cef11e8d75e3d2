"""A worker process: runs one task at a time for its daemon.

Started by the daemon as ``python -m cluster.worker FD`` (spawned, never forked from a
process that runs gRPC), with the daemon's end of a socketpair as FD. It caches functions
by id, loads arguments with the dependency values substituted, runs python apps in-process
and bash apps through ``bash -c``, captures ``print`` output per task, and reports results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, TextIO

from cluster import serialization, wire

# Status codes (mirror shoal.proto's Status enum; this module must not import protobuf).
OK, APP_ERROR, BASH_EXIT = 0, 1, 5
FLUSH_SECONDS = 0.2


class TaskOutput:
    """Stands in for sys.stdout/sys.stderr while a task runs: forwards text to the daemon
    (which prints it in the driver) and writes it to the task's log file."""

    def __init__(self, worker: Worker, is_stderr: bool) -> None:
        self._worker = worker
        self._is_stderr = is_stderr
        self._parts: list[str] = []
        self._last = time.monotonic()
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._parts.append(text)
        self._worker.log_to_file(text)
        if "\n" in text and time.monotonic() - self._last > FLUSH_SECONDS:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            self._worker.send(("log", self._worker.task_id, self._worker.task_name, text,
                               self._is_stderr))
        self._last = time.monotonic()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("task output has no file descriptor")

    def writable(self) -> bool:
        return True


class Worker:
    """The loop of one worker process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=1 << 16)
        self.functions: dict[bytes, Any] = {}
        self.task_id = 0
        self.task_name = ""
        self.log_dir = os.environ.get("SHOAL_LOG_DIR", "")
        self._log_file: TextIO | None = None
        self._real_stdout, self._real_stderr = sys.stdout, sys.stderr
        self.out = TaskOutput(self, False)
        self.err = TaskOutput(self, True)
        self._cwd = os.getcwd()

    def send(self, message: tuple) -> None:
        self.sock.sendall(wire.encode(message))

    def log_to_file(self, text: str) -> None:
        if self._log_file is None:
            if not self.log_dir:
                return
            try:
                path = os.path.join(self.log_dir, f"task-{self.task_id:x}.log")
                self._log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self.log_dir = ""
                return
        self._log_file.write(text)

    def serve(self) -> None:
        self.send(("ready", os.getpid()))
        read = self.rfile.read
        unpack = wire.HEADER.unpack
        while True:
            header = read(4)
            if len(header) < 4:
                return
            (length,) = unpack(header)
            message = wire.pickle.loads(read(length))
            kind = message[0]
            if kind == "run":
                self.run(*message[1:])
            elif kind == "fn":
                self.functions[message[1]] = message[2]
            elif kind == "exit":
                return

    def _function(self, fn_id: bytes) -> Any:
        fn = self.functions[fn_id]
        if isinstance(fn, bytes):
            fn = serialization.loads_function(fn)
            self.functions[fn_id] = fn
        return fn

    def run(
        self,
        task_id: int,
        fn_id: bytes,
        kind: int,
        name: str,
        args_blob: bytes,
        dep_values: dict[int, bytes],
        gpus: str | None,
        stdout: tuple[str, str] | None,
        stderr: tuple[str, str] | None,
        cwd: str,
        env: dict[str, str] | None,
    ) -> None:
        self.task_id, self.task_name = task_id, name
        if cwd and cwd != self._cwd:
            try:
                os.chdir(cwd)
                self._cwd = cwd
            except OSError:
                pass  # the driver's directory does not exist on this node
        start = time.perf_counter()
        sys.stdout, sys.stderr = self.out, self.err
        overrides = dict(env or {})
        if gpus is not None:
            overrides["CUDA_VISIBLE_DEVICES"] = gpus
        saved = {key: os.environ.get(key) for key in overrides}
        os.environ.update(overrides)
        try:
            status, data, message = OK, b"", ""
            try:
                fn = self._function(fn_id)
                cache: dict[int, Any] = {}

                def resolve(object_id: int) -> Any:
                    if object_id not in cache:
                        cache[object_id] = serialization.loads(dep_values[object_id])
                    return cache[object_id]

                args, kwargs = serialization.loads(args_blob, resolve)
                value = fn(*args, **kwargs)
                if kind == 1:
                    status, data, message = self._run_bash(name, value, stdout, stderr)
                else:
                    data = serialization.dumps(value)
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the driver
                # Skip this frame: the user's code starts one level down.
                tb = "".join(traceback.format_exception(type(exc), exc,
                                                        exc.__traceback__.tb_next
                                                        if exc.__traceback__ else None))
                status, data, message = APP_ERROR, serialization.dumps_error(exc, tb), str(exc)
        finally:
            self.out.flush()
            self.err.flush()
            sys.stdout, sys.stderr = self._real_stdout, self._real_stderr
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        self.send(("done", task_id, status, data, time.perf_counter() - start, message))

    def _run_bash(
        self,
        name: str,
        command: Any,
        stdout: tuple[str, str] | None,
        stderr: tuple[str, str] | None,
    ) -> tuple[int, bytes, str]:
        if not isinstance(command, str):
            raise TypeError(
                f"bash_app {name!r} must return the command line as a str, "
                f"got {type(command).__name__}"
            )
        out = _open_target(stdout)
        err = _open_target(stderr)
        try:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.PIPE,
                stderr=err if err is not None else subprocess.PIPE,
                text=True,
            )
            captured_out, captured_err = proc.communicate()
        finally:
            for f in (out, err):
                if f is not None:
                    f.close()
        if captured_out:
            self.out.write(captured_out)
        if captured_err:
            self.err.write(captured_err)
        if proc.returncode != 0:
            return BASH_EXIT, str(proc.returncode).encode(), (
                f"bash app {name!r} exited with code {proc.returncode}"
            )
        return OK, serialization.dumps(0), ""


def _open_target(target: tuple[str, str] | None) -> TextIO | None:
    if not target or not target[0]:
        return None
    path, mode = target
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    return open(path, mode or "w", encoding="utf-8")  # noqa: SIM115


def main() -> None:
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    try:
        Worker(sock).serve()
    except (BrokenPipeError, ConnectionResetError):
        pass


if __name__ == "__main__":
    main()
