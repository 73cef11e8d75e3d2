"""cluster.common.bytecode: stale bytecode of shoal's own package is compiled once, by
`up`/`init`, not by every node process."""

import importlib.util
import os

from cluster.common import bytecode


def _package(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_refresh_compiles_only_what_is_stale(tmp_path):
    _package(tmp_path, {"api/__init__.py": "", "api/a.py": "x = 1\n",
                        "cluster/__init__.py": "", "cluster/sub/b.py": "y = 2\n",
                        "elsewhere/c.py": "z = 3\n"})
    first = sorted(os.path.relpath(p, tmp_path) for p in bytecode.refresh(str(tmp_path)))
    assert first == ["api/__init__.py", "api/a.py", "cluster/__init__.py", "cluster/sub/b.py"]
    assert not os.path.exists(importlib.util.cache_from_source(str(tmp_path / "elsewhere/c.py")))
    assert bytecode.refresh(str(tmp_path)) == []   # all current now
    source = tmp_path / "api/a.py"
    source.write_text("x = 100\n")                 # an edit (size changes) or a git pull
    assert not bytecode.stale(str(tmp_path / "cluster/sub/b.py"))
    assert bytecode.stale(str(source))
    assert bytecode.refresh(str(tmp_path)) == [str(source)]
    assert not bytecode.stale(str(source))


def test_a_source_that_does_not_compile_is_skipped(tmp_path):
    _package(tmp_path, {"api/bad.py": "def (:\n", "api/good.py": "ok = True\n"})
    assert bytecode.refresh(str(tmp_path)) == [str(tmp_path / "api/good.py")]


def test_mtime_change_alone_makes_it_stale(tmp_path):
    _package(tmp_path, {"cluster/m.py": "v = 1\n"})
    source = str(tmp_path / "cluster/m.py")
    bytecode.refresh(str(tmp_path))
    st = os.stat(source)
    os.utime(source, (st.st_atime, st.st_mtime + 5))
    assert bytecode.stale(source)


def test_the_installed_package_is_current_after_refresh():
    bytecode.refresh()
    root = os.path.join(bytecode.PACKAGE_ROOT, "cluster", "node", "daemon.py")
    assert not bytecode.stale(root)
