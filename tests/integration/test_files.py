"""api.File, inputs=/outputs= and DataFutures on a real local cluster: a pipeline of three
bash apps chained by their output files, waiting proven by content, failures passed on,
and memoized apps with outputs."""

from __future__ import annotations

import os

import pytest

import api

pytestmark = pytest.mark.timeout(120)


@api.bash_app
def generate(n, outputs=()):
    # Slow on purpose: a consumer that did not wait would find the file missing or short.
    return f"sleep 0.5; seq {n} > {outputs[0]}.part && mv {outputs[0]}.part {outputs[0]}"


@api.bash_app
def double(inputs=(), outputs=()):
    return f"awk '{{print $1 * 2}}' {inputs[0]} > {outputs[0]}"


@api.bash_app
def total(inputs=(), outputs=(), stdout=None):
    return f"awk '{{s += $1}} END {{print s}}' {' '.join(map(str, inputs))} > {outputs[0]}"


@api.python_app
def read_file(path_file):
    return open(path_file).read()


def test_three_bash_apps_chained_by_files(cluster, tmp_path):
    raw, twice, summed = (api.File(str(tmp_path / n)) for n in ("raw", "twice", "sum"))
    first = generate(100, outputs=[raw])
    second = double(inputs=[first.outputs[0]], outputs=[twice])
    third = total(inputs=[second.outputs[0], first.outputs[0]], outputs=[summed])
    out = third.outputs[0]
    assert isinstance(out, api.DataFuture) and out.filepath == summed.path
    assert out.result(timeout=60) == summed
    assert third.result(timeout=60) == 0
    assert open(summed.path).read().strip() == str(3 * 5050)
    assert first.outputs[0].done() and second.outputs[0].result() == twice
    import threading

    seen = []
    done = threading.Event()
    pending = generate(3, outputs=[api.File(str(tmp_path / "cb"))]).outputs[0]
    pending.add_done_callback(lambda f: (seen.append(threading.current_thread().name),
                                         done.set()))
    assert done.wait(60) and seen == ["shoal-callbacks"]
    # A python app given a DataFuture gets the File.
    assert read_file(second.outputs[0]).result(timeout=60).split()[:3] == ["2", "4", "6"]


def test_file_urls_relative_paths_and_many_outputs(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @api.bash_app
    def two(outputs=()):
        return f"echo a > {outputs[0]}; echo b > {outputs[1]}"

    fut = two(outputs=[api.File("rel_a.txt"), api.File(f"file://{tmp_path}/b.txt")])
    a, b = (d.result(timeout=60) for d in fut.outputs)
    assert a.path == str(tmp_path / "rel_a.txt") and os.path.isabs(a.path)
    assert open(a).read() == "a\n" and open(b).read() == "b\n"
    assert fut.outputs[1].filename == "b.txt" and fut.outputs[0].tid == fut.task_id


def test_a_failed_producer_fails_its_files_and_their_consumers(cluster, tmp_path):
    @api.bash_app
    def broken(outputs=()):
        return "exit 3"

    fut = broken(outputs=[api.File(str(tmp_path / "never"))])
    with pytest.raises(api.BashExitFailure):
        fut.outputs[0].result(timeout=60)
    consumer = double(inputs=[fut.outputs[0]], outputs=[api.File(str(tmp_path / "x"))])
    with pytest.raises(api.DependencyError):
        consumer.result(timeout=60)
    with pytest.raises(api.DependencyError):
        consumer.outputs[0].result(timeout=60)


def test_memoized_file_app_runs_once(cluster, tmp_path):
    log = tmp_path / "log"

    @api.bash_app(cache=True)
    def stamp(inputs=(), outputs=()):
        return f"echo ran >> {log}; cat {inputs[0]} > {outputs[0]}"

    src = tmp_path / "src"
    src.write_text("hello\n")
    dst = api.File(str(tmp_path / "dst"))
    a = stamp(inputs=[api.File(str(src))], outputs=[dst])
    b = stamp(inputs=[api.File(str(src))], outputs=[dst])
    assert a.outputs[0].result(timeout=60) == b.outputs[0].result(timeout=60) == dst
    after = stamp(inputs=[a.outputs[0]], outputs=[api.File(str(tmp_path / "dst2"))])
    assert after.outputs[0].result(timeout=60).path == str(tmp_path / "dst2")
    assert log.read_text() == "ran\nran\n"
    assert open(tmp_path / "dst2").read() == "hello\n"


def test_bad_outputs_are_named_and_other_outputs_params_are_left_alone(cluster, tmp_path):
    with pytest.raises(TypeError, match=r"outputs\[1\] is int"):
        double(inputs=[], outputs=[api.File(str(tmp_path / "a")), 3])

    @api.python_app
    def layer(outputs=3):
        return outputs * 2

    fut = layer(outputs=4)  # a parameter that happens to be called outputs
    assert fut.result(timeout=60) == 8 and list(fut.outputs) == []
