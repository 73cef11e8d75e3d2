"""What the start-up path imports (the boot CPU is mostly imports, see the README's Scale
section): the daemon's zygote is forked before gRPC or protobuf are loaded, so forked workers
hold neither (a daemon alone not importing the head: tests/integration/test_boot_path.py)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _modules(code: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", code + "\nprint(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-3000:]
    return set(run.stdout.split())


def _forbidden(loaded: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in roots or
                  any(m.startswith(r + ".") for r in roots if "." in r))


def test_what_the_zygote_inherits_and_imports_holds_no_grpc_or_protobuf():
    loaded = _modules("import sys, importlib\n"
                      "from cluster.node import forkserver\n"
                      "for name in forkserver.SHARED_MODULES:\n"
                      "    importlib.import_module(name)\n"
                      "import cluster.worker.zygote, cluster.worker.worker")
    assert "cluster.common.serialization" in loaded   # (shared: imported once, pre-fork)
    assert _forbidden(loaded, ("grpc", "google")) == []


def test_startup_vars_are_those_a_fork_cannot_change():
    from cluster.node.forkserver import startup_vars

    env = {"PYTHONPATH": "/x", "PYTHONHASHSEED": "0", "LD_LIBRARY_PATH": "/lib",
           "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0"}
    assert startup_vars(env) == {"PYTHONHASHSEED": "0", "LD_LIBRARY_PATH": "/lib"}
