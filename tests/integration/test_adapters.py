"""End-to-end tests of the adapters on a real local cluster: Parsl's ShoalExecutor,
api.Executor (concurrent.futures), the Dask scheduler and the joblib backend."""

from __future__ import annotations

import concurrent.futures
import os
import time

import numpy as np
import pytest

from api.executor import Executor


# ---- concurrent.futures --------------------------------------------------------------------
def square(x):
    return x * x


def add(a, b):
    return a + b


def test_executor_submit_map_and_context_manager(cluster):
    with Executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        fut = ex.submit(square, 7)
        assert isinstance(fut, concurrent.futures.Future)
        assert fut.result(timeout=30) == 49
        assert ex.submit(add, fut, 1).result(timeout=30) == 50     # a future as argument
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        assert list(ex.map(add, range(7), range(7), chunksize=3)) == list(range(0, 14, 2))
        assert list(ex.map(square, [], chunksize=4)) == []
        done, _ = concurrent.futures.wait([ex.submit(square, i) for i in range(4)])
        assert sorted(f.result() for f in done) == [0, 1, 4, 9]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    assert cluster.is_initialized()     # the driver's session is not the executor's to end


def test_executor_errors_timeout_and_cancel(cluster):
    ex = Executor()
    with pytest.raises(ZeroDivisionError):
        ex.submit(divmod, 1, 0).result(timeout=30)
    results = ex.map(time.sleep, [1.5], timeout=0.3)
    with pytest.raises(TimeoutError):
        next(results)
    slow = [ex.submit(time.sleep, 2) for _ in range(3)]    # (they still run on the cluster)
    ex.shutdown(wait=True, cancel_futures=True)
    # Cancelled, so shutdown(wait=True) had nothing of theirs to wait for (no timing assert).
    assert all(f.cancelled() and f.done() for f in slow)


def test_executor_options(cluster):
    with Executor(num_cpus=1, resources={"licence": 1}) as ex:
        assert ex.submit(square, 3).result(timeout=30) == 9
        two = ex.options(num_cpus=2)
        assert list(two.map(square, [1, 2])) == [1, 4]
        with pytest.raises(cluster.ResourceUnavailableError):
            ex.options(num_cpus=64).submit(square, 1)
        with pytest.raises(TypeError, match="unknown Executor option"):
            ex.options(colour="red")


# ---- Dask ------------------------------------------------------------------------------------
dask = pytest.importorskip("dask")


def test_import_api_dask_keeps_dask_the_library(cluster):
    import importlib

    importlib.import_module("api.dask")                 # first api.dask, then dask
    dask_again = importlib.import_module("dask")
    api_dask = importlib.import_module("api.dask")
    assert dask_again.__file__.endswith(os.path.join("dask", "__init__.py"))
    assert dask_again.compute(dask_again.delayed(add)(1, 2), scheduler=api_dask.get) == (3,)


def test_dask_array_reduction_matches_threaded(cluster):
    import dask.array as da

    import api.dask

    x = da.random.default_rng(1).random((1200, 800), chunks=(300, 200))
    expected = dask.compute(x.sum(), x.mean(axis=0), scheduler="threads")
    got = dask.compute(x.sum(), x.mean(axis=0), scheduler=api.dask.get)
    assert got[0] == pytest.approx(expected[0])
    np.testing.assert_allclose(got[1], expected[1])
    with dask.config.set(scheduler=api.dask.get):
        np.testing.assert_allclose(((x + x.T.T) / 2).std().compute(), x.std().compute(
            scheduler="threads"))
        assert x[:2, :2].compute().shape == (2, 2)
    assert api.dask.get({"a": 1, "b": (add, "a", 10)}, ["b", "a"]) == (11, 1)
    assert api.dask.get({"a": 1, "b": (add, "a", 10)}, "b") == 11
    assert api.dask.get({"a": 1, "b": (add, "a", 1), "c": (add, "b", "b")},
                        [["c"], ["a", "b"]]) == ((4,), (1, 2))


def test_dask_intermediate_chunks_stay_in_the_object_store(cluster, monkeypatch):
    """8 MB chunks go task to task; the driver loads none of them, only the scalar."""
    import dask.array as da

    import api.dask
    from api import _session

    client = _session.client()
    loads = []
    real_load = client.load
    monkeypatch.setattr(client, "load", lambda result: loads.append(result) or
                        real_load(result))
    x = da.random.default_rng(2).random((4000, 4000), chunks=(1000, 1000))  # 16 x 8 MB
    y = (x.rechunk((500, 4000)) * 2).rechunk((4000, 500))      # every chunk a task's output
    total = y.sum()
    graph = total.__dask_graph__()
    assert len(graph) > 50
    expected = total.compute(scheduler="threads")
    assert total.compute(scheduler=api.dask.get) == pytest.approx(expected)
    assert loads == []


def test_dask_dataframe(cluster):
    import dask.dataframe as dd
    import pandas as pd

    import api.dask

    df = pd.DataFrame({"k": np.arange(20000) % 9, "v": np.arange(20000.0)})
    ddf = dd.from_pandas(df, npartitions=5)
    got = ddf.groupby("k").v.sum().compute(scheduler=api.dask.get)
    pd.testing.assert_series_equal(got.sort_index(), df.groupby("k").v.sum())
    assert len(ddf[ddf.v > 1000].compute(scheduler=api.dask.get)) == 18999
    whole = ddf.compute(scheduler=api.dask.get)           # large: out of the object store
    whole.loc[0, "v"] = -1.0                               # and writable, as with threads
    assert whole.v.iloc[0] == -1.0


def test_dask_large_results_writable_or_zero_copy(cluster):
    import dask.array as da

    import api.dask

    x = da.ones((1000, 1000), chunks=(500, 500)) * 3
    arr = x.compute(scheduler=api.dask.get)
    arr[0, 0] = 0                                          # a copy the caller owns
    assert arr.sum() == 3 * 10**6 - 3
    mapped = api.dask.get(x.__dask_graph__(), x.__dask_keys__(), writable=False)
    assert not mapped[0][0].flags.writeable                # zero-copy, read-only


def fail(x):
    raise KeyError(f"no {x}")


def test_dask_errors_are_the_tasks_own(cluster):
    import api.dask

    bad = dask.delayed(fail)(1)
    with pytest.raises(KeyError, match="no 1"):
        bad.compute(scheduler=api.dask.get)
    with pytest.raises(KeyError, match="no 1"):             # through a dependent
        dask.delayed(add)(bad, 1).compute(scheduler=api.dask.get)


# ---- joblib ----------------------------------------------------------------------------------
joblib = pytest.importorskip("joblib")


def test_joblib_backend_batches_small_calls(cluster, monkeypatch):
    import api.joblib

    api.joblib.register()
    tasks = []
    real_submit = api.joblib.ShoalBackend.submit
    monkeypatch.setattr(api.joblib.ShoalBackend, "submit",
                        lambda self, func, callback=None: tasks.append(len(func)) or
                        real_submit(self, func, callback))
    with joblib.parallel_config(backend="shoal"):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(3000))
    assert out == [i * i for i in range(3000)]
    assert sum(tasks) == 3000
    assert len(tasks) < 3000 / 4, "small calls should be batched"


def ones(n):
    return np.ones(n)


def test_joblib_large_results_are_the_callers(cluster):
    import api.joblib

    api.joblib.register()
    with joblib.parallel_config(backend="shoal"):
        arrays = joblib.Parallel(n_jobs=2)(joblib.delayed(ones)(10**6) for _ in range(3))
    arrays[0][0] = 7.0                                   # changeable, as loky's results are
    assert [a.sum() for a in arrays] == [10**6 + 6, 10**6, 10**6]


def test_joblib_n_jobs_generator_and_errors(cluster):
    import api.joblib

    api.joblib.register()
    with joblib.parallel_config(backend="shoal"):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(add)(i, 1) for i in range(5)) == \
            [1, 2, 3, 4, 5]
        gen = joblib.Parallel(n_jobs=2, return_as="generator")(
            joblib.delayed(square)(i) for i in range(6))
        assert list(gen) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(KeyError, match="no [234]") as info:
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail)(i) for i in range(2, 5))
        assert type(info.value) is KeyError                  # the call's own exception
    assert api.joblib.ShoalBackend().effective_n_jobs(-1) == 2     # the cluster's 2 slots


# ---- Parsl -----------------------------------------------------------------------------------
parsl = pytest.importorskip("parsl")


@pytest.fixture
def dfk(cluster, tmp_path):
    """Parsl loaded with a ShoalExecutor on the shared cluster."""
    from parsl.config import Config

    from api.parsl import ShoalExecutor

    loaded = parsl.load(Config(executors=[ShoalExecutor()], run_dir=str(tmp_path / "runinfo"),
                               initialize_logging=False))
    yield loaded
    loaded.cleanup()


@parsl.python_app
def p_add(a, b):
    return a + b


@parsl.python_app
def p_big(n):
    import numpy

    return numpy.ones(n)


@parsl.python_app
def p_total(arr):
    return float(arr.sum())


@parsl.python_app
def p_env(name, parsl_resource_specification=None):
    import os

    return os.environ.get(name)


@parsl.python_app
def p_fail():
    raise ValueError("from the app")


@parsl.bash_app
def p_echo(msg, stdout=parsl.AUTO_LOGNAME, stderr=parsl.AUTO_LOGNAME):
    return f"echo {msg}; echo oops >&2"


@parsl.bash_app
def p_mpi(stdout=None, parsl_resource_specification=None):
    return 'echo "$PARSL_MPI_PREFIX|$PARSL_NUM_RANKS"'


def test_parsl_python_apps_on_shoal(dfk):
    from api import _futures

    assert p_add(p_add(1, 2), p_add(3, 4)).result(timeout=60) == 10
    fut = p_add(1, 1)
    fut.result(timeout=60)
    assert isinstance(fut.task_record["exec_fu"], _futures.AppFuture)   # ran on shoal
    with pytest.raises(ValueError, match="from the app"):
        p_fail().result(timeout=60)


def test_parsl_bash_apps_auto_logname_and_mpi_prefix(dfk, tmp_path):
    fut = p_echo("hello")
    assert fut.result(timeout=60) == 0
    with open(fut.stdout) as f:
        assert f.read() == "hello\n"
    with open(fut.stderr) as f:
        assert f.read().endswith("oops\n")      # after Parsl's own "--> executable" lines
    out = tmp_path / "mpi.out"
    spec = {"num_nodes": 1, "ranks_per_node": 2}
    assert p_mpi(stdout=str(out), parsl_resource_specification=spec).result(timeout=60) == 0
    prefix, ranks = out.read_text().strip().split("|")
    assert prefix.startswith("srun --overlap --nodes=1 --ntasks=2") and ranks == "2"


def test_parsl_resource_specification(dfk):
    from parsl.executors.errors import InvalidResourceSpecification

    spec = {"num_cpus": 2, "memory": 1, "resources": {"licence": 1}, "priority": 3}
    assert p_env("PATH", parsl_resource_specification=spec).result(timeout=60)
    with pytest.raises(InvalidResourceSpecification):
        p_env("PATH", parsl_resource_specification={"colour": "red"}).result(timeout=60)


def test_parsl_large_results_pass_by_reference(dfk):
    executor = dfk.executors["shoal"]
    big = p_big(2_000_000)                             # 16 MB: stays in the object store
    arr = big.result(timeout=60)
    exec_fu = big.task_record["exec_fu"]
    assert executor._as_ref(arr) is exec_fu             # handed on as the shoal future
    assert p_total(big).result(timeout=60) == 2_000_000.0


@parsl.python_app
def p_big_dict(n):
    import numpy

    return {"a": numpy.ones(n)}


def test_parsl_changeable_results_go_by_value(dfk):
    executor = dfk.executors["shoal"]
    d = p_big_dict(2_000_000).result(timeout=60)
    assert executor._as_ref(d) is d                     # the driver may change a dict
    assert not d["a"].flags.writeable                   # the mapped array itself is not


def test_parsl_writable_results(cluster, tmp_path):
    from parsl.config import Config

    from api.parsl import ShoalExecutor

    loaded = parsl.load(Config(executors=[ShoalExecutor(writable_results=True)],
                               run_dir=str(tmp_path / "runinfo"), initialize_logging=False))
    try:
        arr = p_big(2_000_000).result(timeout=60)
        arr[0] = 5.0                                     # the driver's own copy
        assert p_total(arr).result(timeout=60) == 2_000_004.0   # passed on by value
    finally:
        loaded.cleanup()


def test_parsl_executor_options_checked():
    import tomllib

    from api.parsl import ShoalExecutor
    from cluster.slurm import config as slurm_config

    with pytest.raises(ValueError, match="unknown key"):
        ShoalExecutor(slurm={"partition": "debug", "colour": "red"})
    with pytest.raises(ValueError, match="min_blocks"):
        ShoalExecutor(slurm={"min_blocks": 3, "max_blocks": 2})
    blocks = {"partition": "debug", "nodes_per_block": 2, "max_blocks": 4, "parallelism": 0.5,
              "walltime": "01:00:00", "worker_init": 'source "$HOME/venv/bin/activate"'}
    toml = ShoalExecutor(slurm=blocks).slurm_toml()
    assert tomllib.loads(toml) == blocks                 # what `clusterctl up --config` reads
    assert slurm_config.from_mapping(tomllib.loads(toml)).nodes_per_block == 2
