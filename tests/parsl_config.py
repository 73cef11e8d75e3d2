"""Parsl config for Parsl's own test suite on shoal, and a pytest-9 shim for that suite.

    pytest --config tests/parsl_config.py -p parsl_config .../parsl/tests/test_python_apps

``fresh_config()`` gives ``Config(executors=[ShoalExecutor(...)])`` on an embedded 2-slot
cluster (this machine has 2 cores; Parsl's local_threads config has 2 threads).

Loaded as a plugin (``-p parsl_config``), it also adapts the one hook of Parsl's
tests/conftest.py that pytest 9 refuses (``pytest_ignore_collect(path)``: the ``path``
argument was removed in pytest 9) before pytest registers that conftest.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from parsl.config import Config

from api.parsl import ShoalExecutor


def fresh_config() -> Config:
    """A Parsl config with one ShoalExecutor on an embedded local cluster."""
    return Config(executors=[ShoalExecutor(label="shoal", num_cpus=2)])


def _adapt(module: types.ModuleType) -> None:
    hook = getattr(module, "pytest_ignore_collect", None)
    if hook is None or "path" not in inspect.signature(hook).parameters:
        return

    def pytest_ignore_collect(collection_path: Any) -> Any:
        return hook(types.SimpleNamespace(strpath=str(collection_path)))

    pytest_ignore_collect.__signature__ = inspect.signature(  # type: ignore[attr-defined]
        lambda collection_path: None)
    module.pytest_ignore_collect = pytest_ignore_collect  # type: ignore[attr-defined]


def pytest_addhooks(pluginmanager: Any) -> None:
    """Adapt conftests written for pytest < 9 as they are registered."""
    original = pluginmanager.consider_conftest

    def consider_conftest(conftestmodule: types.ModuleType, registration_name: str) -> None:
        _adapt(conftestmodule)
        original(conftestmodule, registration_name)

    pluginmanager.consider_conftest = consider_conftest
