"""Slurm glue: reading an allocation, the srun command lines we generate, scancel/squeue.

Pure functions (parsing, building command lines) are separate from the few that run Slurm
commands, so the command lines are pinned by golden-file tests without a Slurm.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

COMMAND_TIMEOUT = 30.0

#: Variables that describe a job *step*. Workers drop them, so an `srun` inside a bash app
#: starts a fresh step of the allocation instead of inheriting the daemon step's shape.
STEP_VARIABLES = re.compile(
    r"^SLURM_(STEP_\w+|STEPID|NTASKS\w*|NPROCS|PROCID|LOCALID|NODEID|TASK_PID|TASKS_PER_NODE|"
    r"CPU_BIND\w*|CPUS_PER_TASK|DISTRIBUTION|SRUN_COMM_\w+|LAUNCH_NODE_IPADDR|PRIO_PROCESS|"
    r"UMASK|GTIDS|OVERLAP|MEM_PER_\w+|CPU_FREQ_REQ|TOPOLOGY_ADDR\w*|EXPORT_ENV|"
    r"JOB_CPUS_PER_NODE_STEP|STEP_GPUS|GPUS_ON_NODE|SPANK_\w+)$")


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message says which and what it said."""


@dataclass
class Allocation:
    """What this Slurm job has, read from the environment."""

    job_id: str
    nodes: list[str]
    cpus: dict[str, int] = field(default_factory=dict)     # per node
    memory_mb: int = 0                                      # per node, 0 = unknown
    gpus_per_node: int = 0
    partition: str = ""
    mem_per_cpu_mb: int = 0                                 # SLURM_MEM_PER_CPU, 0 = unset
    configured_memory_mb: dict[str, int] = field(default_factory=dict)  # RealMemory

    def uniform_cpus(self) -> int:
        """CPUs every node has (the smallest per-node count)."""
        return min(self.cpus.values()) if self.cpus else 1

    def node_memory_mb(self) -> int:
        """Memory (MB) the job may use on every node, 0 when unknown.

        ``--mem`` (SLURM_MEM_PER_NODE), else ``--mem-per-cpu``/DefMemPerCPU
        (SLURM_MEM_PER_CPU) times the node's CPUs, else the nodes' configured RealMemory;
        the smallest over the nodes, as for :meth:`uniform_cpus`.

        >>> Allocation("1", ["a", "b"], {"a": 4, "b": 2}, mem_per_cpu_mb=100).node_memory_mb()
        200
        """
        if self.memory_mb:
            return self.memory_mb
        if self.mem_per_cpu_mb:
            return self.mem_per_cpu_mb * self.uniform_cpus()
        if self.configured_memory_mb and all(n in self.configured_memory_mb
                                             for n in self.nodes):
            return min(self.configured_memory_mb[n] for n in self.nodes)
        return 0


def _megabytes(value: str, name: str) -> int:
    """A Slurm memory value in MB ("2048", "2048M", "2G"); 0 for empty."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", value or "0", re.IGNORECASE)
    if not m:
        raise SlurmError(f"cannot parse {name}={value!r} (expected megabytes, e.g. 2048)")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2).upper()]
    return int(int(m.group(1)) * scale)


def parse_real_memory(scontrol_output: str) -> dict[str, int]:
    """{node: RealMemory MB} from ``scontrol show node -o``.

    >>> parse_real_memory("NodeName=n1 CPUTot=4 RealMemory=4096 AllocMem=0")
    {'n1': 4096}
    """
    out: dict[str, int] = {}
    for line in scontrol_output.splitlines():
        name = re.search(r"\bNodeName=(\S+)", line)
        real = re.search(r"\bRealMemory=(\d+)", line)
        if name and real:
            out[name.group(1)] = int(real.group(1))
    return out


def expand_cpus_per_node(value: str, nodes: Sequence[str]) -> dict[str, int]:
    """``SLURM_JOB_CPUS_PER_NODE`` ("4(x2),2") -> {node: cpus}.

    >>> expand_cpus_per_node("4(x2),2", ["a", "b", "c"])
    {'a': 4, 'b': 4, 'c': 2}
    """
    counts: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            raise ValueError(f"cannot parse SLURM_JOB_CPUS_PER_NODE={value!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if len(counts) < len(nodes):
        counts += [counts[-1] if counts else 1] * (len(nodes) - len(counts))
    return dict(zip(nodes, counts, strict=False))


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist without Slurm ("node[1-3,5],gpu01" -> names).

    Used when ``scontrol show hostnames`` is unavailable; handles the common forms
    (ranges with zero padding, several bracket groups, comma lists).

    >>> expand_nodelist("node[1-3],gpu[08-10]")
    ['node1', 'node2', 'node3', 'gpu08', 'gpu09', 'gpu10']
    """
    names: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", nodelist):
        parts = re.split(r"(\[[^\]]*\])", item)
        expanded = [""]
        for part in parts:
            if part.startswith("["):
                choices = []
                for rng in part[1:-1].split(","):
                    if "-" in rng:
                        lo, hi = rng.split("-", 1)
                        width = len(lo)
                        choices += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
                    else:
                        choices.append(rng)
                expanded = [e + c for e in expanded for c in choices]
            else:
                expanded = [e + part for e in expanded]
        names += expanded
    return [n for n in names if n]


def _gpus_from_env(env: Mapping[str, str]) -> int:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key, "")
        m = re.search(r"(\d+)$", value)
        if m:
            return int(m.group(1))
    job_gpus = env.get("SLURM_JOB_GPUS", "")
    if job_gpus:
        return len([g for g in job_gpus.split(",") if g])
    return 0


def allocation_from_env(env: Mapping[str, str], nodes: list[str] | None = None) -> Allocation:
    """The allocation described by a Slurm job's environment.

    `nodes` is the expanded node list (``hostnames()``); without it the list is expanded
    in Python.
    """
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        raise SlurmError("not inside a Slurm allocation (SLURM_JOB_ID is not set); run "
                         "`salloc` first, or use clusterctl up outside Slurm for a local one")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    if nodes is None:
        nodes = expand_nodelist(nodelist)
    if not nodes:
        raise SlurmError(f"job {job_id} has no node list (SLURM_JOB_NODELIST is empty)")
    cpus_value = env.get("SLURM_JOB_CPUS_PER_NODE") or env.get("SLURM_CPUS_ON_NODE") or "1"
    memory = _megabytes(env.get("SLURM_MEM_PER_NODE", ""), "SLURM_MEM_PER_NODE")
    per_cpu = _megabytes(env.get("SLURM_MEM_PER_CPU", ""), "SLURM_MEM_PER_CPU")
    return Allocation(job_id, nodes, expand_cpus_per_node(cpus_value, nodes), memory,
                      _gpus_from_env(env), env.get("SLURM_JOB_PARTITION", ""), per_cpu)


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the step-scoped SLURM_* variables (see :data:`STEP_VARIABLES`)."""
    return {k: v for k, v in env.items() if not STEP_VARIABLES.match(k)}


# ---- command lines (pure; pinned by golden files) -------------------------------------
def head_srun_command(alloc: Allocation, node: str, python: str,
                      node_args: Sequence[str]) -> list[str]:
    """srun line that starts the head on `node` (used when `up` runs off the allocation,
    e.g. in an salloc shell on a login node)."""
    return ["srun", "--overlap", f"--jobid={alloc.job_id}", "--nodes=1", "--ntasks=1",
            f"--nodelist={node}", "--kill-on-bad-exit=0", "--export=ALL",
            python, "-m", "cluster.node", *node_args]


def daemon_srun_command(alloc: Allocation, python: str, node_args: Sequence[str]) -> list[str]:
    """srun line that starts one daemon on every node of the allocation, as one step.

    ``--overlap`` keeps the step from holding the nodes' CPUs, so the user's own srun
    calls (and bash apps' nested srun) still run; ``--cpus-per-task`` and ``--mem=0`` let
    the daemon and its workers use the whole allocation on each node; GPUs are requested
    so Slurm sets CUDA_VISIBLE_DEVICES for the daemon, which hands them out per task.
    The allocation's memory per node (:meth:`Allocation.node_memory_mb`) becomes each
    daemon's ``--memory``, not the host's RAM.
    """
    n = len(alloc.nodes)
    cmd = ["srun", "--overlap", f"--jobid={alloc.job_id}", f"--nodes={n}", f"--ntasks={n}",
           f"--cpus-per-task={alloc.uniform_cpus()}", "--mem=0", "--kill-on-bad-exit=0",
           "--export=ALL", f"--job-name=shoal-daemons-{alloc.job_id}"]
    if alloc.gpus_per_node:
        cmd.append(f"--gres=gpu:{alloc.gpus_per_node}")
    memory = ["--memory", str(alloc.node_memory_mb() * 2**20)] if alloc.node_memory_mb() else []
    return [*cmd, python, "-m", "cluster.node", *node_args, *memory]


def mpi_prefix(nodes: Sequence[str], ranks_per_node: int, mpi: str = "") -> str:
    """``$CLUSTER_MPI_PREFIX`` for a multi-node bash app (as Parsl's $PARSL_MPI_PREFIX).

    >>> mpi_prefix(["node1", "node2"], 2)
    'srun --overlap --nodes=2 --ntasks=4 --ntasks-per-node=2 --nodelist=node1,node2'
    """
    parts = ["srun", "--overlap", f"--nodes={len(nodes)}",
             f"--ntasks={len(nodes) * ranks_per_node}", f"--ntasks-per-node={ranks_per_node}",
             f"--nodelist={','.join(nodes)}"]
    if mpi:
        parts.append(f"--mpi={mpi}")
    return shlex.join(parts)


# ---- running Slurm commands -------------------------------------------------------------
def run(cmd: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a Slurm command; its stdout, or SlurmError saying what failed and why."""
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"`{cmd[0]}` is not on PATH: is Slurm installed here (module load "
                         "slurm?), or are you outside the cluster?")
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(cmd)}` did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        raise SlurmError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def hostnames(nodelist: str) -> list[str]:
    """``scontrol show hostnames NODELIST`` (falls back to :func:`expand_nodelist`)."""
    if shutil.which("scontrol") is None:
        return expand_nodelist(nodelist)
    return run(["scontrol", "show", "hostnames", nodelist]).split()


def current_allocation() -> Allocation:
    """The allocation of the Slurm job we are in."""
    env = dict(os.environ)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    alloc = allocation_from_env(env, hostnames(nodelist) if nodelist else None)
    if not alloc.node_memory_mb() and shutil.which("scontrol") is not None:
        try:  # the job named no memory: it may use what the nodes are configured with
            out = run(["scontrol", "show", "node", "-o", ",".join(alloc.nodes)])
            alloc.configured_memory_mb = parse_real_memory(out)
        except SlurmError:
            pass
    return alloc


def job_steps(job_id: str) -> list[str]:
    """Ids ("JOB.STEP") of the job's running steps."""
    out = run(["squeue", "--noheader", "--steps", f"--jobs={job_id}", "--format=%i"])
    return [line.strip() for line in out.splitlines() if line.strip()]


def cancel(ids: Sequence[str]) -> None:
    """``scancel`` the given job or step ids, in one call; already-gone ids are fine."""
    if not ids:
        return
    try:
        run(["scancel", *ids])
    except SlurmError as err:
        if "Invalid job id" not in str(err) and "already completing" not in str(err):
            raise


def cancel_by_name(name: str) -> None:
    """``scancel`` every job of this user named `name` (blocks whose id was never recorded,
    e.g. when the head died right after sbatch)."""
    import getpass

    run(["scancel", f"--name={name}", f"--user={getpass.getuser()}"])


def in_allocation() -> bool:
    """True inside a Slurm job (salloc shell, sbatch script, or srun step)."""
    return bool(os.environ.get("SLURM_JOB_ID") or os.environ.get("SLURM_JOBID"))


def python_executable() -> str:
    """The interpreter nodes should run (ours: the same venv on the shared file system)."""
    return sys.executable
