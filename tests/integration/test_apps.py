"""Apps, futures and the DAG on a real embedded cluster (head, daemon, worker processes)."""

from __future__ import annotations

import concurrent.futures
import os
import threading

import pytest

import api


@api.python_app
def add(a, b=0):
    return a + b


@api.python_app
def total(*values, **named):
    """Sums everything, flattening lists/tuples/dicts: proves futures inside were resolved."""
    out = 0
    for value in [*values, *named.values()]:
        if isinstance(value, dict):
            out += sum(value.values())
        elif isinstance(value, list | tuple):
            out += sum(value)
        else:
            out += value
    return out


@api.python_app
def fail(message="boom"):
    raise ValueError(message)


@api.python_app
def identity(x):
    return x


@api.python_app
def where():
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_python_app_returns_future_immediately(cluster):
    fut = add(1, 2)
    assert isinstance(fut, concurrent.futures.Future)
    assert isinstance(fut, api.AppFuture)
    assert fut.result(timeout=30) == 3
    assert fut.done() and fut.exception() is None


def test_decorator_with_options_and_bare_agree(cluster):
    @api.python_app(num_cpus=1, max_retries=1, walltime=30)
    def mul(a, b):
        return a * b

    assert mul(6, 7).result(timeout=30) == 42
    assert repr(mul).startswith("<python_app mul")


def test_dag_with_futures_nested_in_containers(cluster):
    a, b, c = add(1), add(2), add(3)
    nested = total([a, b], (c, 4), {"x": add(10), "y": 5}, extra=add(100))
    assert nested.result(timeout=30) == 1 + 2 + 3 + 4 + 10 + 5 + 100


def test_chain_of_dependencies(cluster):
    fut = add(0, 1)
    for _ in range(50):
        fut = add(fut, 1)
    assert fut.result(timeout=60) == 51


def test_app_exception_is_task_error_with_original_type_and_traceback(cluster):
    fut = fail("no good")
    with pytest.raises(api.TaskError) as info:
        fut.result(timeout=30)
    err = info.value
    assert isinstance(err, ValueError), "the original exception type must still match"
    assert err.exc_type == "ValueError"
    assert isinstance(err.cause, ValueError) and str(err.cause) == "no good"
    assert "raise ValueError(message)" in err.remote_traceback
    assert "no good" in str(err)


def test_failed_dependency_fails_dependents_but_not_unrelated_branches(cluster):
    bad = fail("root cause")
    child = add(bad, 1)
    grandchild = add(child, 1)
    fine = add(add(1, 1), 1)
    with pytest.raises(api.DependencyError) as info:
        child.result(timeout=30)
    assert "fail" in str(info.value) and "root cause" in str(info.value)
    with pytest.raises(api.DependencyError):
        grandchild.result(timeout=30)
    assert fine.result(timeout=30) == 3


def test_retries_rerun_a_failing_app(cluster, tmp_path):
    counter = tmp_path / "attempts"

    @api.python_app(max_retries=2)
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        with open(path, "w") as f:
            f.write(str(n + 1))
        if n < 2:
            raise RuntimeError(f"attempt {n} fails")
        return n

    assert flaky(str(counter)).result(timeout=60) == 2
    assert counter.read_text() == "3"


def test_retries_exhausted_reports_the_last_error(cluster, tmp_path):
    @api.python_app(max_retries=1)
    def always(path):
        with open(path, "a") as f:
            f.write("x")
        raise KeyError("never")

    path = tmp_path / "runs"
    with pytest.raises(KeyError):
        always(str(path)).result(timeout=60)
    assert path.read_text() == "xx"


def test_worker_crash_gives_worker_crashed_error_and_worker_is_replaced(cluster):
    @api.python_app
    def die():
        os._exit(3)

    with pytest.raises(api.WorkerCrashedError) as info:
        die().result(timeout=60)
    assert "died" in str(info.value)
    # The daemon replaced the worker: the cluster still runs tasks on both slots.
    pids = {f.result(timeout=60)[0] for f in [where() for _ in range(20)]}
    assert pids


def test_worker_crash_is_retried(cluster, tmp_path):
    marker = tmp_path / "crashed-once"

    @api.python_app(max_retries=1)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(9)
        return "survived"

    assert crash_once(str(marker)).result(timeout=60) == "survived"


def test_walltime_kills_python_app(cluster):
    @api.python_app(walltime=0.5)
    def sleepy():
        import time

        time.sleep(30)

    with pytest.raises(api.AppTimeout) as info:
        sleepy().result(timeout=60)
    assert "walltime" in str(info.value)
    assert add(1, 1).result(timeout=30) == 2


def test_unpicklable_argument_fails_at_call_naming_it(cluster):
    lock = threading.Lock()
    with pytest.raises(api.SerializationError) as info:
        identity(lock)
    assert "argument 0" in str(info.value) and "lock" in str(info.value)
    with pytest.raises(TypeError) as info:
        add(1, b=threading.Lock())
    assert "'b'" in str(info.value)


def test_lambdas_and_local_classes_travel_by_value(cluster):
    class Point:
        def __init__(self, x):
            self.x = x

    fut = identity(lambda: 5)

    @api.python_app
    def call(fn, p):
        return fn() + p.x

    assert call(fut, Point(2)).result(timeout=30) == 7


def test_impossible_resource_request_fails_at_submission(cluster):
    @api.python_app(num_cpus=64)
    def huge():
        return 1

    with pytest.raises(api.ResourceUnavailableError) as info:
        huge()
    message = str(info.value)
    assert "cpus=64" in message and "largest node has cpus=2" in message

    @api.python_app(num_gpus=1)
    def needs_gpu():
        return 1

    with pytest.raises(api.ResourceUnavailableError, match="gpus=1"):
        needs_gpu()


def test_custom_resources_limit_concurrency(cluster, tmp_path):
    @api.python_app(resources={"licence": 1})
    def licensed(path, i):
        import time

        with open(path, "a") as f:
            f.write(f"start {i}\n")
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write(f"end {i}\n")
        return i

    log = tmp_path / "log"
    assert sorted(f.result(timeout=60) for f in [licensed(str(log), i) for i in range(3)]) == \
        [0, 1, 2]
    lines = log.read_text().split()
    # Only one licence: starts and ends alternate strictly.
    kinds = lines[0::2]
    assert kinds == ["start", "end"] * 3


def test_print_in_apps_reaches_driver_with_prefix(cluster, capfd):
    @api.python_app
    def chatty(x):
        print(f"hello from the app {x}")
        return x

    fut = chatty(7)
    assert fut.result(timeout=30) == 7
    import time

    deadline = time.monotonic() + 10
    out = ""
    while time.monotonic() < deadline and "hello from the app 7" not in out:
        time.sleep(0.05)
        out += capfd.readouterr().out
    line = next(x for x in out.splitlines() if "hello from the app 7" in x)
    assert line.startswith(f"(chatty task={fut.task_id:#x} node="), "the id the future shows"
    assert f"{fut.task_id:#x}" in repr(fut)


def test_put_get_wait_as_completed(cluster):
    ref = api.put({"numbers": list(range(100))})
    assert isinstance(ref, api.ObjectRef)
    assert api.get(ref) == {"numbers": list(range(100))}

    @api.python_app
    def count(d):
        return sum(d["numbers"])

    futs = [count(ref) for _ in range(4)]
    assert api.get(futs) == [4950] * 4
    assert api.get([ref, futs[0]]) == [{"numbers": list(range(100))}, 4950]

    slow = [add(i) for i in range(6)]
    done, pending = api.wait(slow, num_returns=6, timeout=30)
    assert len(done) == 6 and pending == []
    assert sorted(f.result() for f in api.as_completed([add(i) for i in range(5)])) == \
        list(range(5))


def test_get_timeout(cluster):
    @api.python_app
    def slow():
        import time

        time.sleep(2)
        return 1

    with pytest.raises(TimeoutError):
        api.get(slow(), timeout=0.1)


def test_many_tasks_all_complete(cluster):
    futs = [add(i, 1) for i in range(3000)]
    assert sum(f.result(timeout=120) for f in futs) == sum(range(1, 3001))


def test_app_called_inside_app_submits_a_task(cluster):
    @api.python_app
    def outer(x):
        inner = add(x, 1)  # inside a worker an app call is a task too (dynamic workflows)
        assert isinstance(inner, api.AppFuture)
        return inner.result() * 2

    assert outer(4).result(timeout=30) == 10


def test_bad_decorator_options_are_refused():
    with pytest.raises(ValueError, match="num_cpus"):
        api.python_app(num_cpus=-1)(lambda: 1)
    with pytest.raises(ValueError, match="walltime"):
        api.python_app(walltime=0)(lambda: 1)
    with pytest.raises(ValueError, match="num_gpus"):
        api.python_app(resources={"gpus": 1})(lambda: 1)


def test_print_also_goes_to_the_tasks_log_file(cluster):
    @api.python_app
    def noisy():
        print("kept in the task log")
        return 1

    fut = noisy()
    assert fut.result(timeout=30) == 1
    log_dir = api.init(ignore_reinit_error=True).log_dir
    path = os.path.join(log_dir, "tasks", f"task-{fut.task_id:x}.log")
    assert open(path).read() == "kept in the task log\n"
