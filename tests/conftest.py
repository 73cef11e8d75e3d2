"""Shared fixtures: every test session gets its own SHOAL_HOME, so cluster files of the
developer's real clusters are never seen or touched."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="shoal-test-home-")
os.environ["SHOAL_HOME"] = _HOME
os.environ.pop("SHOAL_ADDRESS", None)
os.environ.pop("SLURM_JOB_ID", None)

import api  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_OPTIONS = {"num_cpus": 2, "resources": {"licence": 1}}


@pytest.fixture
def cluster(tmp_path_factory):
    """An embedded local cluster (2 worker slots, one custom 'licence'), reused across tests."""
    if not api.is_initialized():
        api.init(run_dir=str(tmp_path_factory.mktemp("runinfo")), **CLUSTER_OPTIONS)
    yield api
    assert api.is_initialized(), "a test shut the shared cluster down without saying so"


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    """A local cluster with one CPU slot (so one task blocks it), for the module using it."""
    api.shutdown()
    api.init(num_cpus=1, run_dir=str(tmp_path_factory.mktemp("runinfo")))
    yield api
    api.shutdown()


@pytest.fixture
def no_session():
    """No cluster connected while the test runs."""
    api.shutdown()
    yield
    api.shutdown()


@pytest.fixture
def clusterctl():
    """Runs `clusterctl ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    def run(*args, timeout=60, env=None):
        return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **(env or {})})

    return run


def pytest_sessionfinish(session, exitstatus):
    """Leave nothing running: the session's driver, and any cluster a test left up."""
    api.shutdown()
    from cluster.common import clusterfile
    from cluster.slurm import bootstrap

    for cf in clusterfile.running():
        try:
            bootstrap.teardown(cf, 5)
        except Exception:  # noqa: BLE001
            pass
