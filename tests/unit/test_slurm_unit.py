"""cluster/slurm/commands.py without a Slurm: parsing, and golden files pinning generated commands.

Regenerate the golden files after an intended change with SHOAL_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import shlex

import pytest
from helpers import check_golden

from cluster.slurm import commands as slurm

ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "node[1-2]",
    "SLURM_JOB_CPUS_PER_NODE": "4(x2)",
    "SLURM_MEM_PER_NODE": "2048",
    "SLURM_GPUS_ON_NODE": "2",
    "SLURM_JOB_PARTITION": "debug",
}


def test_allocation_from_env():
    alloc = slurm.allocation_from_env(ENV)
    assert alloc.job_id == "4242"
    assert alloc.nodes == ["node1", "node2"]
    assert alloc.cpus == {"node1": 4, "node2": 4}
    assert alloc.memory_mb == 2048 and alloc.gpus_per_node == 2


def test_outside_slurm_is_a_clear_error():
    with pytest.raises(slurm.SlurmError, match="salloc"):
        slurm.allocation_from_env({})


@pytest.mark.parametrize("nodelist,expected", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("gpu[08-10],cpu1", ["gpu08", "gpu09", "gpu10", "cpu1"]),
    ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
])
def test_expand_nodelist(nodelist, expected):
    assert slurm.expand_nodelist(nodelist) == expected


def test_cpus_per_node_forms():
    assert slurm.expand_cpus_per_node("4(x2),2", ["a", "b", "c"]) == {"a": 4, "b": 4, "c": 2}
    assert slurm.expand_cpus_per_node("8", ["a", "b"]) == {"a": 8, "b": 8}
    with pytest.raises(ValueError):
        slurm.expand_cpus_per_node("four", ["a"])


def test_worker_environment_drops_step_variables_only():
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_STEP_ID": "3",
           "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "4",
           "SLURM_PROCID": "0", "SLURM_CONF": "/etc/slurm.conf", "PATH": "/bin"}
    assert slurm.worker_environment(env) == {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
                                             "SLURM_CONF": "/etc/slurm.conf", "PATH": "/bin"}


def test_daemon_srun_command_golden():
    alloc = slurm.allocation_from_env(ENV)
    cmd = slurm.daemon_srun_command(alloc, "/venv/bin/python",
                                    ["--daemon", "--cluster-id", "4242"])
    assert "--ntasks-per-node" not in " ".join(cmd), "must not pin --ntasks-per-node"
    check_golden("daemon_srun.txt", shlex.join(cmd) + "\n")


def test_head_srun_command_golden():
    alloc = slurm.allocation_from_env(ENV)
    cmd = slurm.head_srun_command(alloc, "node1", "/venv/bin/python", ["--head"])
    check_golden("head_srun.txt", shlex.join(cmd) + "\n")


def test_mpi_prefix_golden():
    check_golden("mpi_prefix.txt", slurm.mpi_prefix(["node1", "node2"], 4, "pmi2") + "\n")


def test_missing_slurm_command_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(slurm.SlurmError, match="not on PATH"):
        slurm.cancel(["123"])
