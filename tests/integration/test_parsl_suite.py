"""Parsl's own test suite (test_python_apps and test_bash_apps, shipped inside the parsl
package) run with a ShoalExecutor config (tests/parsl_config.py), in a subprocess.

Parsl's tests/conftest.py declares ``pytest_ignore_collect(path)``, a hook argument that
pytest 9 removed; tests/parsl_config.py, loaded as a plugin, adapts that one hook. The
tests marked ``unix_filesystem_permissions_required`` are deselected when running as root
(they expect that ``/bad/dir`` cannot be created), for every config alike.

Run by hand (and to compare with Parsl's own thread-pool config)::

    .venv/bin/python tests/integration/test_parsl_suite.py            # ShoalExecutor
    .venv/bin/python tests/integration/test_parsl_suite.py --threads  # local_threads
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

parsl = pytest.importorskip("parsl")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(ROOT, "tests", "parsl_config.py")
SUITES = ("test_python_apps", "test_bash_apps")


def run_suite(config: str, workdir: str, timeout: float = 900,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run Parsl's suites with `config` (a config module path) from `workdir`."""
    tests = os.path.join(os.path.dirname(parsl.__file__), "tests")
    # pytest reads --config's value as a path too (before Parsl's conftest declares the
    # option) and loads the conftests above it: give it a copy in the work directory.
    local_config = os.path.join(workdir, os.path.basename(config))
    shutil.copy(config, local_config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [ROOT, os.path.join(ROOT, "tests"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTEST_ADDOPTS", None)
    marks = ["-m", "not unix_filesystem_permissions_required"] if os.geteuid() == 0 else []
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "parsl_config",
           "-q", "-rfEs", "-o", "addopts=", "--rootdir", workdir, "--config", local_config,
           *marks, *extra, *(os.path.join(tests, s) for s in SUITES)]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def summary(output: str) -> dict[str, int]:
    """Counts from pytest's closing line, e.g. {'passed': 80, 'skipped': 2}."""
    last = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if not last:
        return {}
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", last[-1])}


@pytest.mark.timeout(900)
def test_parsl_suite_on_shoal(tmp_path):
    """Parsl's python- and bash-app tests pass on ShoalExecutor (an embedded cluster)."""
    proc = run_suite(CONFIG, str(tmp_path))
    counts = summary(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert counts.get("passed", 0) >= 100, counts
    assert not counts.get("failed") and not counts.get("error") and not counts.get("errors")


if __name__ == "__main__":
    threads = "--threads" in sys.argv
    config = os.path.join(os.path.dirname(parsl.__file__), "tests", "configs",
                          "local_threads.py") if threads else CONFIG
    work = tempfile.mkdtemp(prefix="parsl-suite-")
    args = tuple(a for a in sys.argv[1:] if a != "--threads")
    result = run_suite(config, work, timeout=3000, extra=args)
    print(result.stdout)
    print(result.stderr[-3000:], file=sys.stderr)
    sys.exit(result.returncode)
