"""Bad input gets a clear one-line error naming the value and what to do (no processes).

Each test here failed before its fix: a bare AttributeError/TypeError from deep inside, a
value silently accepted, or a wait for a timeout instead of an error at once.
"""

from __future__ import annotations

import json
import socket

import pytest

import api
from cluster import cli
from cluster.common import clusterfile
from cluster.slurm import commands as slurm


# ---- 1. cluster files that are not cluster files ----------------------------------------
@pytest.mark.parametrize("content,field", [
    ("[1, 2]", "a JSON object"),
    ('"just a string"', "a JSON object"),
    ('{"cluster_id": "c", "address": 5, "secret": "s"}', "address"),
    ('{"cluster_id": "c", "address": "h:1", "secret": "s", "nodes": "n1"}', "nodes"),
    ('{"cluster_id": "c", "address": "h:1", "secret": "s", "head_pid": "12"}', "head_pid"),
    ('{"cluster_id": "c", "address": "h:1", "secret": "s", "extra": []}', "extra"),
    ('{"address": "h:1", "secret": "s"}', "cluster_id"),
])
def test_cluster_file_of_the_wrong_shape_names_file_and_field(tmp_path, no_session, content,
                                                              field):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=field) as info:
        clusterfile.read(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(api.ConnectionError, match=field) as info:
        api.init(str(path))
    assert str(path) in str(info.value)


def test_a_good_cluster_file_still_reads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"cluster_id": "c", "address": "h:1", "secret": "s",
                                "head_pid": 7, "created": 1, "unknown_key": 1}))
    cf = clusterfile.read(str(path))
    assert cf.address == "h:1" and cf.head_pid == 7 and cf.created == 1


# ---- 2. addresses -------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:0", "localhost:65536"])
def test_port_out_of_range_is_refused(no_session, address):
    with pytest.raises(ValueError, match="port") as info:
        api.init(address)
    assert address in str(info.value)


def test_refused_port_fails_at_once_saying_what_was_tried(no_session, monkeypatch):
    monkeypatch.setenv("SHOAL_SECRET", "whatever")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()  # nothing listens there now
    # Before the fix this waited the whole timeout and said "no answer within 30s".
    with pytest.raises(api.ConnectionError, match="refused") as info:
        api.init(address, timeout=30)
    assert address in str(info.value) and "tried" in str(info.value)


# ---- 3. init arguments --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    ({"num_cpus": -1}, "num_cpus"),
    ({"num_cpus": "2"}, "num_cpus"),
    ({"num_cpus": 1.5}, "num_cpus"),
    ({"num_gpus": -1}, "num_gpus"),
    ({"object_store_memory": -1}, "object_store_memory"),
    ({"object_store_memory": "8G"}, "object_store_memory"),
    ({"timeout": -1}, "timeout"),
    ({"resources": {"x": "a"}}, "x"),
    ({"resources": {"x": -1}}, "x"),
    ({"resources": {"x": float("nan")}}, "x"),
    ({"resources": {"x": float("inf")}}, "x"),
    ({"resources": {1: 1}}, "1"),
    ({"resources": {"x": True}}, "x"),
    ({"resources": ["x"]}, "resources"),
])
def test_bad_init_arguments_are_value_errors_naming_them(no_session, kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        api.init(**kwargs)
    assert not api.is_initialized()


# ---- 4. app options -----------------------------------------------------------------------
@pytest.mark.parametrize("options,name", [
    ({"num_cpus": "2"}, "num_cpus"),
    ({"num_gpus": "1"}, "num_gpus"),
    ({"memory": "1G"}, "memory"),
    ({"memory": -1}, "memory"),
    ({"max_retries": "3"}, "max_retries"),
    ({"max_retries": 1.5}, "max_retries"),
    ({"max_retries": -1}, "max_retries"),
    ({"walltime": "60"}, "walltime"),
    ({"walltime": -5}, "walltime"),
    ({"num_cpus": float("nan")}, "num_cpus"),
    ({"resources": {"x": "1"}}, "x"),
    ({"resources": {"x": -1}}, "x"),
    ({"resources": {3: 1}}, "3"),
    ({"resources": "licence"}, "resources"),
    ({"num_cpus": True}, "num_cpus"),
])
def test_bad_app_options_name_the_option_and_value(options, name):
    for decorator in (api.python_app, api.bash_app):
        with pytest.raises((ValueError, TypeError), match=name) as info:
            decorator(**options)(lambda: 1)
        value = next(iter(options.values()))
        if not isinstance(value, dict):
            assert repr(value) in str(info.value)
    app = api.python_app(lambda: 1)
    with pytest.raises((ValueError, TypeError), match=name):
        app.options(**options)


def test_good_app_options_still_work():
    app = api.python_app(num_cpus=0.5, num_gpus=0, memory=2**20, max_retries=2, walltime=1.5,
                         resources={"licence": 1})(lambda: 1)
    assert app.request == {"cpus": 0.5, "memory": float(2**20), "licence": 1.0}


# ---- 5. get_actor -------------------------------------------------------------------------
@pytest.mark.parametrize("name", [123, None, b"x"])
def test_get_actor_of_a_non_string_is_a_type_error(no_session, name):
    with pytest.raises(TypeError, match="actor name.*str"):
        api.get_actor(name)


# ---- 6. clusterctl options ----------------------------------------------------------------
def test_unknown_subcommand_option_shows_that_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["up", "--num-cpis", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: clusterctl up" in err and "--num-cpis" in err


@pytest.mark.parametrize("argv", [["up", "--num-cpu", "2"], ["status", "--js"],
                                  ["down", "--clus", "x"]])
def test_abbreviated_options_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert f"usage: clusterctl {argv[0]}" in capsys.readouterr().err


def test_down_with_nothing_to_stop_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cli.main(["down"]) == 0
    assert "nothing to stop" in capsys.readouterr().out
    down = clusterfile.ClusterFile(cluster_id="old", address="127.0.0.1:1", secret="",
                                   state="down")
    down.save()
    assert cli.main(["down"]) == 0


def test_down_with_several_clusters_still_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for name in ("a", "b"):
        clusterfile.ClusterFile(cluster_id=name, address="127.0.0.1:1", secret="s").save()
    assert cli.main(["down"]) == 1
    assert "several clusters" in capsys.readouterr().err


def test_down_of_an_unreadable_job_cluster_file_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    with open(clusterfile.path_for("777"), "w") as f:
        f.write("[]")
    assert cli.main(["down"]) == 1
    err = capsys.readouterr().err
    assert "777.json" in err and "Traceback" not in err


# ---- 7. down cluster files lose their secret --------------------------------------------
def test_mark_down_blanks_the_secret_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    cf = clusterfile.ClusterFile(cluster_id="c1", address="h:1", secret="s3cret",
                                 head_pid=42, slurm_steps=["1.0"], slurm_jobs=["2"],
                                 extra={"launcher_pids": [5]})
    cf.save()
    clusterfile.mark_down(cf)
    again = clusterfile.read(cf.path)
    assert again.state == "down" and again.secret == ""
    assert "s3cret" not in open(cf.path).read()
    assert again.head_pid == 42 and again.slurm_steps == ["1.0"]
    assert again.slurm_jobs == ["2"] and again.extra == {"launcher_pids": [5]}


def test_init_of_a_down_cluster_file_says_it_is_down(tmp_path, monkeypatch, no_session):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    cf = clusterfile.ClusterFile(cluster_id="gone", address="127.0.0.1:1", secret="s")
    cf.save()
    clusterfile.mark_down(cf)
    with pytest.raises(api.ConnectionError, match="gone .* is down"):
        api.init(cf.path)


# ---- 8. memory of a Slurm allocation ------------------------------------------------------
BASE = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)"}


def test_memory_per_node_from_the_allocation():
    assert slurm.allocation_from_env({**BASE, "SLURM_MEM_PER_NODE": "2048"}).node_memory_mb() \
        == 2048
    assert slurm.allocation_from_env({**BASE, "SLURM_MEM_PER_CPU": "256"}).node_memory_mb() \
        == 1024
    uneven = {**BASE, "SLURM_JOB_CPUS_PER_NODE": "4,2", "SLURM_MEM_PER_CPU": "100"}
    assert slurm.allocation_from_env(uneven).node_memory_mb() == 200  # what every node has
    assert slurm.allocation_from_env(BASE).node_memory_mb() == 0


def test_configured_node_memory_when_the_job_names_none():
    alloc = slurm.allocation_from_env(BASE)
    alloc.configured_memory_mb = {"n1": 4096, "n2": 3000}
    assert alloc.node_memory_mb() == 3000
    out = ("NodeName=n1 Arch=x86_64 CPUTot=4 RealMemory=4096 AllocMem=0\n"
           "NodeName=n2 Arch=x86_64 CPUTot=4 RealMemory=3000 AllocMem=0\n")
    assert slurm.parse_real_memory(out) == {"n1": 4096, "n2": 3000}


@pytest.mark.parametrize("extra,memory", [({"SLURM_MEM_PER_NODE": "2048"}, 2048 * 2**20),
                                          ({"SLURM_MEM_PER_CPU": "256"}, 1024 * 2**20)])
def test_daemon_srun_line_carries_the_allocations_memory(extra, memory):
    alloc = slurm.allocation_from_env({**BASE, **extra})
    cmd = slurm.daemon_srun_command(alloc, "/py", ["--daemon"])
    assert cmd[-2:] == ["--memory", str(memory)]
    assert "--memory" not in slurm.daemon_srun_command(slurm.allocation_from_env(BASE), "/py",
                                                       ["--daemon"])
