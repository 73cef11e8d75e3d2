"""Bash apps: exit codes, stdout/stderr targets, AUTO_LOGNAME, walltime, the Parsl seed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT

import api

DEMO = os.path.join(ROOT, "scripts", "demo")


@api.bash_app
def echo(msg, stdout=api.AUTO_LOGNAME, stderr=api.AUTO_LOGNAME):
    return f"echo {msg}; echo to-err {msg} >&2"


@api.bash_app
def exit_with(code):
    return f"exit {code}"


def test_auto_logname_files_hold_output(cluster):
    fut = echo("hello")
    assert fut.result(timeout=30) == 0
    assert fut.stdout.endswith(".stdout") and fut.stderr.endswith(".stderr")
    assert os.path.isabs(fut.stdout)
    assert open(fut.stdout).read() == "hello\n"
    assert open(fut.stderr).read() == "to-err hello\n"
    assert "task_logs" in fut.stdout


def test_explicit_paths_and_append_mode(cluster, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("before\n")
    f1 = echo("one", stdout=(str(out), "a"), stderr=str(tmp_path / "err.txt"))
    assert f1.result(timeout=30) == 0
    assert out.read_text() == "before\none\n"
    f2 = echo("two", stdout=str(out))
    f2.result(timeout=30)
    assert out.read_text() == "two\n"
    assert f2.stdout == str(out)


def test_nonzero_exit_raises_bash_exit_failure(cluster):
    with pytest.raises(api.BashExitFailure) as info:
        exit_with(7).result(timeout=30)
    assert info.value.exitcode == 7
    assert "exit code 7" in str(info.value)
    assert exit_with(0).result(timeout=30) == 0


def test_bash_walltime_kills_command_and_its_children(cluster, tmp_path):
    marker = tmp_path / "late"

    @api.bash_app(walltime=0.5)
    def slow(path):
        return f"sleep 3; touch {path}"

    with pytest.raises(api.AppTimeout):
        slow(str(marker)).result(timeout=30)
    import time

    time.sleep(3.5)
    assert not marker.exists(), "the bash child outlived the walltime kill"


def test_bash_app_depends_on_python_future(cluster, tmp_path):
    @api.python_app
    def make_word():
        return "dependency-value"

    out = tmp_path / "dep.txt"
    fut = echo(make_word(), stdout=str(out))
    assert fut.result(timeout=30) == 0
    assert out.read_text() == "dependency-value\n"


def test_bash_app_must_return_a_string(cluster):
    @api.bash_app
    def broken():
        return 42

    with pytest.raises(api.TaskError, match="must return the command line as a str"):
        broken().result(timeout=30)


def test_bad_stdout_target_is_refused_at_call(cluster):
    with pytest.raises(TypeError, match="stdout"):
        echo("x", stdout=42)
    with pytest.raises(ValueError, match="mode"):
        echo("x", stdout=("/tmp/x", "r"))


def test_bash_output_without_target_reaches_driver(cluster, capfd):
    @api.bash_app
    def shout():
        return "echo unredirected-output"

    shout().result(timeout=30)
    import time

    out = ""
    deadline = time.monotonic() + 10
    while "unredirected-output" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
        out += capfd.readouterr().out
    assert "(shout task=" in out and "unredirected-output" in out


def test_parsl_seed_example_runs_unchanged(tmp_path):
    """scripts/demo/argsum.py: 8 python sums and 8 bash sums written to AUTO_LOGNAME files."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(DEMO, "argsum.py")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("sum(")]
    assert len(lines) == 8
    for i, line in enumerate(lines):
        a = 3 * i + 1
        expected = 3 * a + 3
        assert line.startswith(f"sum({a}, {a + 1}, {a + 2}) = {expected} ")
        path = line.split(" to ")[-1].rstrip(")")
        assert open(path).read().strip() == str(expected)
