"""The daemon's side of its worker processes: spawn, talk to, kill.

Each worker is forked by the daemon's zygote (:mod:`cluster.node.forkserver`, a process
forked before the daemon imported gRPC; a few ms of CPU instead of 0.06-0.09 s), or, where
that cannot serve, a fresh interpreter (``python -m cluster.worker``) started with
``subprocess`` (spawn, never fork: the daemon runs gRPC threads), in its own session. The
worker makes itself a child subreaper (Linux), so everything an app starts stays in the
worker's process tree, even children that left its session (``setsid``, double forks):
killing a worker (walltime, cancel, daemon stop) kills that whole tree, found through
``/proc`` (:mod:`cluster.common.proctree`), which the worker also uses to end a task's
leftovers.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from cluster.common import wire
from cluster.common.messages import Exit
from cluster.common.paths import PACKAGE_ROOT
from cluster.common.proctree import kill_tree
from cluster.common.streams import AsyncFrameProtocol
from cluster.node import forkserver


def one_node_mpi_env(node: str, ranks: int) -> dict[str, str]:
    """The ``$CLUSTER_*`` variables of a one-node app asking for `ranks` ranks (the head
    sets them only for multi-node gangs, so `num_nodes=1, ranks_per_node=4` used to get
    an empty ``$CLUSTER_MPI_PREFIX`` and run one rank).

    Inside a Slurm job the prefix is the gang's ``srun --overlap`` line for this node;
    outside Slurm it is ``mpirun -np N`` (Open MPI: ``--oversubscribe``, and, as root,
    ``--allow-run-as-root``), or, without mpirun, ``python -m cluster.worker --ranks N``
    (N local copies, see :mod:`cluster.worker.__main__`).
    """
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        from cluster.slurm.commands import mpi_prefix

        prefix = mpi_prefix([os.environ.get("SLURMD_NODENAME") or node], ranks,
                            os.environ.get("SHOAL_MPI", ""))
    else:
        prefix = " ".join([*_local_launcher(), str(ranks)])
    return {"CLUSTER_NODELIST": node, "CLUSTER_NUM_NODES": "1",
            "CLUSTER_RANKS_PER_NODE": str(ranks), "CLUSTER_MPI_PREFIX": prefix}


@functools.cache
def _local_launcher() -> tuple[str, ...]:
    """The local rank launcher, up to its rank count (asked once per daemon: `mpirun
    --version` takes ~50 ms)."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return (sys.executable, "-m", "cluster.worker", "--ranks")
    try:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    flags: list[str] = []
    if "Open MPI" in version:  # more ranks than cores is the user's call; root is ours
        flags.append("--oversubscribe")
        if os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return (mpirun, *flags, "-np")


def worker_env(log_dir: str) -> dict[str, str]:
    """Environment for worker processes: ours, plus the package on the path."""
    env = dict(os.environ)
    if "SLURM_STEP_ID" in env:
        from cluster.slurm.commands import worker_environment

        env = worker_environment(env)  # so bash apps' own srun starts a fresh step
    env["SHOAL_LOG_DIR"] = log_dir
    path = env.get("PYTHONPATH", "")
    parts = [p for p in path.split(os.pathsep) if p]
    if PACKAGE_ROOT not in parts:
        parts.insert(0, PACKAGE_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("SHOAL_SECRET", None)  # workers never call the cluster's RPCs themselves
    return env


class WorkerHandle:
    """One worker process and the state the daemon keeps about it."""

    def __init__(
        self,
        index: int,
        on_message: Callable[[WorkerHandle, Any], None],
        on_lost: Callable[[WorkerHandle], None],
    ) -> None:
        self.index = index
        self.pid = 0
        self.proc: subprocess.Popen[bytes] | forkserver.ForkedProc | None = None
        self.functions: set[bytes] = set()
        self.allocs: list[str] = []           # store files it is writing (not sealed)
        self.ready = False
        self.task: Any = None                 # the running task record, if any
        self.timed_out = False
        self.closing = False
        self.stack: list[Any] = []            # tasks blocked under `task` (cluster.node.nested)
        self.waiting = False                  # blocked in a wait: may run one more task
        self.channel = 0                      # its nested client's channel (0: none)
        #: Staged tasks sent ahead to it (cluster.node.staged), in order, behind `anchor`
        #: (the task it runs now, or the last of them).
        self.presented: deque[int] = deque()
        self.anchor = 0
        #: Queued tasks prefetched to it (cluster.node.prefetch), in order, not started.
        self.prefetched: deque[Any] = deque()
        self._on_message = on_message
        self._on_lost = on_lost
        self._protocol: AsyncFrameProtocol | None = None
        self._sock: socket.socket | None = None

    async def start(self, env: dict[str, str]) -> None:
        """Spawn the process and connect its socket to the event loop."""
        self.spawn(env)
        await self.attach()

    def spawn(self, env: dict[str, str]) -> None:
        """Start the process (no event loop needed: a node spawns its first workers while
        it is still importing gRPC)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = ours
        try:
            self.proc = forkserver.spawn(env, theirs.fileno())
            if self.proc is None:  # (no zygote here: see forkserver)
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "cluster.worker", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        finally:
            theirs.close()
        self.pid = self.proc.pid

    async def attach(self) -> None:
        """Connect the spawned process's socket to the running event loop."""
        loop = asyncio.get_running_loop()
        protocol = AsyncFrameProtocol(lambda m: self._on_message(self, m), lambda: self._lost())
        await loop.create_unix_connection(lambda: protocol, sock=self._sock)
        self._protocol = protocol

    def _lost(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.kill()
        self._on_lost(self)

    def send(self, message: tuple) -> None:
        """Queue a frame for the worker (a :mod:`cluster.common.messages` type)."""
        if self._protocol is not None:
            self._protocol.send(message)

    def send_many(self, messages: list[tuple]) -> None:
        """Queue several frames in one write (one syscall instead of one each)."""
        if self._protocol is not None:
            self._protocol.write(b"".join([wire.encode(m) for m in messages]))

    def kill(self) -> None:
        """SIGKILL the worker and every process below it: its process group, and, since
        the worker is a subreaper, what left that group (setsid, double forks) too."""
        if self.pid:
            if self.proc is None or self.proc.poll() is None:  # (a dead pid may be reused)
                kill_tree(self.pid)
            for sig_target in (lambda: os.killpg(self.pid, signal.SIGKILL),
                               lambda: os.kill(self.pid, signal.SIGKILL)):
                try:
                    sig_target()
                    break
                except (ProcessLookupError, PermissionError):
                    continue

    def stop(self) -> None:
        """Ask the worker to exit after its current frame."""
        self.closing = True
        self.send(Exit())
