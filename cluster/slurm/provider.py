"""The Slurm block provider: submit, status, cancel. Mechanism only, no policy.

A *block* is one sbatch job whose script runs ``worker_init`` and then starts one daemon
per node with ``srun`` that joins the head. All blocks of a cluster share the job name
``shoal-<cluster id>``, so ``down`` can cancel a block even if the head died between
``sbatch`` and recording its id. No accounting database is assumed (``sacct`` may be
missing): status comes from ``squeue``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cluster.slurm import commands as slurm
from cluster.slurm.config import ScalingConfig


@dataclass(frozen=True)
class JobState:
    """One block job as squeue shows it."""

    state: str                 # PENDING, RUNNING, COMPLETING, ... ("GONE": not listed)
    time_left: float | None    # seconds, when running
    reason: str = ""


class BlockProvider(Protocol):
    """What the block manager needs of a batch system: three verbs, all blocking.

    :class:`SlurmProvider` is the real one; unit tests use a fake that moves jobs through
    PENDING, RUNNING and COMPLETED/FAILED on command.
    """

    def submit(self, block_id: str) -> str:
        """Start one block; returns its job id. Raises when the job could not be queued."""
        ...

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """State of each job in `job_ids`; a job the batch system no longer lists is GONE."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel these jobs; ids that already ended are fine."""
        ...


def job_name(cluster_id: str) -> str:
    """The Slurm job name of every block of a cluster."""
    return f"shoal-{cluster_id}"


def block_script(cfg: ScalingConfig, *, cluster_id: str, block_id: str, head_address: str,
                 secret_file: str, python: str, log_dir: str, package_root: str) -> str:
    """The sbatch script of one block (pinned by a golden-file test).

    It does not pin ``--ntasks-per-node``, so a bash app's own ``srun`` works; the daemon
    step uses ``--overlap`` for the same reason. The secret is read from the 0600 cluster
    file by the daemon, never written into the script or a command line.
    """
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={job_name(cluster_id)}",
             f"#SBATCH --nodes={cfg.nodes_per_block}",
             f"#SBATCH --cpus-per-task={cfg.cores_per_node}",
             f"#SBATCH --time={cfg.walltime}",
             f"#SBATCH --output={os.path.join(log_dir, 'block-%j.out')}"]
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(cfg, key)
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    if cfg.mem_per_node:
        lines.append(f"#SBATCH --mem={int(cfg.mem_per_node * 1000)}M")
    if cfg.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{cfg.gpus_per_node}")
    lines += [line.strip() for line in cfg.scheduler_options.splitlines() if line.strip()]
    lines += ["", "# worker_init", cfg.worker_init.strip() or ":", ""]
    daemon = [python, "-m", "cluster.node", "--daemon", "--cluster-id", cluster_id,
              "--head-address", head_address, "--secret-file", secret_file,
              "--block-id", block_id, "--log-dir", log_dir, "--host", "auto",
              "--num-cpus", str(cfg.cores_per_node)]
    if cfg.gpus_per_node:
        daemon += ["--num-gpus", str(cfg.gpus_per_node)]
    if cfg.mem_per_node:
        daemon += ["--memory", str(int(cfg.mem_per_node * 1e9))]
    if cfg.interface:
        daemon += ["--interface", cfg.interface]
    srun = ["srun", "--overlap", f"--nodes={cfg.nodes_per_block}",
            f"--ntasks={cfg.nodes_per_block}", f"--cpus-per-task={cfg.cores_per_node}",
            "--mem=0", "--kill-on-bad-exit=0"]
    if cfg.gpus_per_node:
        srun.append(f"--gres=gpu:{cfg.gpus_per_node}")
    lines += [f"export PYTHONPATH={shlex.quote(package_root)}${{PYTHONPATH:+:$PYTHONPATH}}",
              f"export SHOAL_BLOCK_ID={shlex.quote(block_id)}",
              "exec " + shlex.join(srun + daemon), ""]
    return "\n".join(lines)


class SlurmProvider:
    """A :class:`BlockProvider` running sbatch/squeue/scancel for one cluster's blocks (one
    call for many ids, with a timeout each)."""

    def __init__(self, cfg: ScalingConfig, *, cluster_id: str, head_address: str,
                 secret_file: str, python: str, log_dir: str, package_root: str) -> None:
        self.cfg = cfg
        self.cluster_id = cluster_id
        self.head_address = head_address
        self.secret_file = secret_file
        self.python = python
        self.log_dir = log_dir
        self.package_root = package_root

    def script(self, block_id: str) -> str:
        """The sbatch script for `block_id`."""
        return block_script(self.cfg, cluster_id=self.cluster_id, block_id=block_id,
                            head_address=self.head_address, secret_file=self.secret_file,
                            python=self.python, log_dir=self.log_dir,
                            package_root=self.package_root)

    def submit(self, block_id: str) -> str:
        """sbatch one block; returns its job id."""
        path = os.path.join(self.log_dir, f"block-{block_id}.sh")
        with open(path, "w") as f:
            f.write(self.script(block_id))
        out = slurm.run(["sbatch", "--parsable", path])
        return out.strip().split(";")[0]

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """State of each job (one squeue call); jobs squeue no longer lists are GONE."""
        if not job_ids:
            return {}
        out = slurm.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}",
                          "--format=%i|%T|%L|%r"])
        states = {j: JobState("GONE", None) for j in job_ids}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4 and parts[0] in states:
                states[parts[0]] = JobState(parts[1], _seconds(parts[2]), parts[3])
        return states

    def cancel(self, job_ids: Sequence[str]) -> None:
        """scancel the given blocks (one call)."""
        slurm.cancel(list(job_ids))


def _seconds(text: str) -> float | None:
    """squeue's %L ("1-02:03:04", "03:04", "UNLIMITED", "INVALID") -> seconds."""
    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return float(days * 86400 + h * 3600 + m * 60 + s)
