"""The autoscaler's policy, its config and the block script: pure, no processes."""

from __future__ import annotations

import pytest
from helpers import check_golden

from cluster.policy.autoscaler import BlockView, Demand, ScalingInput, backoff, decide
from cluster.slurm import config
from cluster.slurm.config import ConfigError, ScalingConfig
from cluster.slurm.provider import _seconds, block_script

CFG = ScalingConfig(nodes_per_block=1, cores_per_node=2, min_blocks=0, max_blocks=2,
                    max_idletime=5, drain_margin=30)


def test_burst_scales_out_to_max_blocks():
    d = decide(ScalingInput(Demand(queued_tasks=24, queued_cpus=24)), CFG)
    assert d.add == 2 and not d.drain
    assert any("24 tasks queued" in r for r in d.reasons)


def test_pending_blocks_count_as_capacity():
    blocks = [BlockView("1", "pending")]
    d = decide(ScalingInput(Demand(queued_tasks=2, queued_cpus=2), blocks), CFG)
    assert d.add == 0


def test_never_beyond_max_blocks():
    blocks = [BlockView("1", "running"), BlockView("2", "pending")]
    d = decide(ScalingInput(Demand(queued_tasks=100, queued_cpus=100), blocks), CFG)
    assert d.add == 0 and any("max_blocks" in r for r in d.reasons)


def test_parallelism_scales_out_less():
    cfg = ScalingConfig(cores_per_node=2, max_blocks=10, parallelism=0.5)
    d = decide(ScalingInput(Demand(queued_tasks=8, queued_cpus=8)), cfg)
    assert d.add == 2


def test_static_nodes_count_as_capacity():
    d = decide(ScalingInput(Demand(queued_tasks=4, queued_cpus=4), static_cpus=4), CFG)
    assert d.add == 0


def test_task_needing_resources_only_a_block_has_adds_one():
    d = decide(ScalingInput(Demand(queued_tasks=1, queued_cpus=1, unmet=True),
                            static_cpus=8), CFG)
    assert d.add == 1
    pending = [BlockView("1", "pending")]
    assert decide(ScalingInput(Demand(queued_tasks=1, queued_cpus=1, unmet=True), pending,
                               static_cpus=8), CFG).add == 0


def test_idle_blocks_drain_only_after_max_idletime_and_when_nothing_queued():
    blocks = [BlockView("1", "running", idle_seconds=6), BlockView("2", "running",
                                                                    idle_seconds=2)]
    d = decide(ScalingInput(Demand(), blocks), CFG)
    assert d.drain == ["1"]
    d = decide(ScalingInput(Demand(queued_tasks=1, queued_cpus=1), blocks), CFG)
    assert d.drain == []


def test_min_blocks_are_kept_and_restored():
    cfg = ScalingConfig(cores_per_node=2, min_blocks=1, max_blocks=3, max_idletime=5)
    blocks = [BlockView("1", "running", idle_seconds=100)]
    assert decide(ScalingInput(Demand(), blocks), cfg).drain == []
    assert decide(ScalingInput(Demand(), []), cfg).add == 1


def test_walltime_drains_and_replaces_while_work_remains():
    blocks = [BlockView("1", "running", walltime_left=20), BlockView("2", "running",
                                                                     walltime_left=500)]
    d = decide(ScalingInput(Demand(queued_tasks=3, queued_cpus=3, running_cpus=4), blocks),
               CFG)
    assert d.drain == ["1"] and d.add == 1
    d = decide(ScalingInput(Demand(), blocks), CFG)
    assert d.drain == ["1"] and d.add == 0


def test_failed_starts_back_off_exponentially():
    demand = Demand(queued_tasks=4, queued_cpus=4)
    assert decide(ScalingInput(demand, failures=1, since_failure=2), CFG).add == 0
    assert decide(ScalingInput(demand, failures=1, since_failure=6), CFG).add == 2
    assert decide(ScalingInput(demand, failures=3, since_failure=15), CFG).add == 0
    assert [backoff(n) for n in range(5)] == [0, 5, 10, 20, 40]
    assert backoff(100) == 300


def test_draining_blocks_are_not_capacity():
    blocks = [BlockView("1", "draining")]
    assert decide(ScalingInput(Demand(queued_tasks=2, queued_cpus=2), blocks), CFG).add == 1


def test_config_from_flags_and_errors_name_the_key(tmp_path):
    cfg = config.from_mapping({"partition": "debug", "nodes_per_block": 2, "max_blocks": 3})
    assert cfg.partition == "debug" and cfg.nodes_per_block == 2
    with pytest.raises(ConfigError, match="unknown key 'nodes'"):
        config.from_mapping({"nodes": 2})
    with pytest.raises(ConfigError, match="nodes_per_block: expected int"):
        config.from_mapping({"nodes_per_block": "two"})
    with pytest.raises(ConfigError, match="min_blocks .* larger than max_blocks"):
        config.from_mapping({"min_blocks": 3, "max_blocks": 2})
    with pytest.raises(ConfigError, match="walltime"):
        config.from_mapping({"walltime": "soon"})
    with pytest.raises(ConfigError, match="scheduler_options"):
        config.from_mapping({"scheduler_options": "--exclusive"})
    path = tmp_path / "cluster.toml"
    path.write_text('partition = "debug"\ncores_per_node = 4\nmax_blocks = 2\n')
    cfg = config.load(str(path), {"max_blocks": 5})
    assert (cfg.partition, cfg.cores_per_node, cfg.max_blocks) == ("debug", 4, 5)
    path.write_text("partition = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.toml"))


def test_walltime_parsing():
    assert config.parse_walltime("00:30:00") == 1800
    assert config.parse_walltime("1-00:00:00") == 86400
    assert _seconds("1-02:03:04") == 93784 and _seconds("03:04") == 184
    assert _seconds("UNLIMITED") is None


def test_block_script_golden():
    cfg = config.from_mapping({
        "partition": "debug", "account": "proj1", "nodes_per_block": 2, "cores_per_node": 4,
        "mem_per_node": 8, "gpus_per_node": 1, "walltime": "01:00:00",
        "scheduler_options": "#SBATCH --exclusive", "interface": "ib0",
        "worker_init": "module load python\nsource ~/venv/bin/activate"})
    text = block_script(cfg, cluster_id="shoal-abc", block_id="3",
                        head_address="tcp:10.0.0.1:4567", secret_file="/home/u/.shoal/c.json",
                        python="/venv/bin/python", log_dir="/tmp/logs", package_root="/src")
    assert "--ntasks-per-node" not in text
    assert "SHOAL_SECRET" not in text
    check_golden("block_script.sh", text)
