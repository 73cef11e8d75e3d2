"""The examples in the pure modules' docstrings run and are right.

Listed modules must have examples; any other module of ``cluster/policy`` or
``cluster/common`` that has some is run too.
"""

from __future__ import annotations

import doctest
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED = ["cluster.policy.scheduler", "cluster.policy.autoscaler", "cluster.common.ids",
            "cluster.policy.priority", "api._retry", "api._lease",
            "cluster.store.bulkcopy"]
SCANNED = ["cluster/policy", "cluster/common"]


def _with_examples() -> list[str]:
    found = []
    for folder in SCANNED:
        for filename in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not filename.endswith(".py") or filename.startswith("shoal_pb2"):
                continue
            with open(os.path.join(ROOT, folder, filename), encoding="utf-8") as f:
                if ">>>" not in f.read():
                    continue
            name = f"{folder}/{filename[:-3]}".replace("/", ".").removesuffix(".__init__")
            found.append(name)
    return found


MODULES = REQUIRED + [m for m in _with_examples() if m not in REQUIRED]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
