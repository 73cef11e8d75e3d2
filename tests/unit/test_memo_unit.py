"""Memoization keys (api._memo) and the checkpoint store (api._checkpoint), without a
cluster: what goes into a key, what changes it, what cannot be hashed, and a store that
survives damaged files and dead writers."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

import api
from api import _cache, _memo
from api._checkpoint import CheckpointStore, Record


def digest(*values):
    h = _memo.Hasher()
    for i, v in enumerate(values):
        h.feed(v, f"argument {i}")
    return h.digest()


def fn_digest(fn):
    h = _memo.Hasher()
    h.feed_function(fn, "fn")
    return h.digest()


def test_values_hash_by_value_not_by_order_or_identity():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({3, 1, 2}) == digest({2, 3, 1})
    assert digest(np.arange(10)) == digest(np.arange(10))
    assert digest(np.arange(10)) != digest(np.arange(10).astype(np.int32))
    assert digest(np.arange(10)) != digest(np.arange(10).reshape(2, 5))
    assert digest(api.File("x.txt")) == digest(api.File(os.path.abspath("x.txt")))


@pytest.mark.parametrize("a,b", [(1, 1.0), (1, True), ("1", b"1"), ((1, 2), [1, 2]),
                                 (0.1, 0.1000000001), ([[1], 2], [1, [2]]), (None, "None")])
def test_different_values_give_different_keys(a, b):
    assert digest(a) != digest(b)


def test_keys_do_not_depend_on_the_hash_seed():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from api import _memo; "
            "h = _memo.Hasher(); h.feed({'x': {'a', 'b', 'c'}, 'y': frozenset({1, 'z'})}, "
            "'v'); print(h.digest())")
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2", "3")}
    assert len(seen) == 1


def test_function_keys_do_not_depend_on_the_hash_seed():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from api import _memo\n"
            "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n"
            "h = _memo.Hasher(); h.feed_function(f, 'f'); print(h.digest())")
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2", "3", "4")}
    assert len(seen) == 1


def test_library_functions_count_by_name():
    import json

    def f(x):
        return json.dumps(x)

    h = _memo.Hasher()
    h.feed_function(f, "f")  # does not walk json's code
    assert fn_digest(np.mean) == fn_digest(np.mean)


def test_functions_hash_by_code_defaults_and_closure():
    def f(x):
        return x + 1

    first = fn_digest(f)

    def f(x):  # noqa: F811 - same name, other code
        return x + 2

    assert fn_digest(f) != first

    def make(k):
        def g(x):
            return x * k
        return g

    assert fn_digest(make(2)) == fn_digest(make(2))
    assert fn_digest(make(2)) != fn_digest(make(3))

    def h(x, scale=1):
        return x * scale

    def h2(x, scale=2):
        return x * scale

    h2.__qualname__ = h.__qualname__
    assert fn_digest(h) != fn_digest(h2)


def _helper_a(x):
    return x + 1


def _uses_helper(x):
    return _helper_a(x)


@api.python_app
def _inner_app(x):
    return x + 1


def _calls_app(x):
    return _inner_app(x).result()


def test_an_app_the_function_calls_counts_by_its_code():
    before = fn_digest(_calls_app)
    original = _inner_app.fn.__code__
    try:
        _inner_app.fn.__code__ = (lambda x: x + 5).__code__
        assert fn_digest(_calls_app) != before
    finally:
        _inner_app.fn.__code__ = original


def test_a_helper_the_function_calls_is_part_of_its_key():
    before = fn_digest(_uses_helper)
    original = _helper_a.__code__
    try:
        _helper_a.__code__ = (lambda x: x + 100).__code__
        assert fn_digest(_uses_helper) != before
    finally:
        _helper_a.__code__ = original
    assert fn_digest(_uses_helper) == before


def test_nested_code_is_hashed():
    def outer1(x):
        return [(lambda y: y + 1)(v) for v in x]

    def outer2(x):
        return [(lambda y: y + 2)(v) for v in x]

    outer2.__qualname__ = outer1.__qualname__
    assert fn_digest(outer1) != fn_digest(outer2)


@dataclasses.dataclass
class Params:
    n: int
    name: str


def test_dataclasses_and_enums_hash_by_fields():
    assert digest(Params(1, "a")) == digest(Params(1, "a"))
    assert digest(Params(1, "a")) != digest(Params(2, "a"))


def test_unhashable_values_raise_cache_key_error_naming_where():
    with pytest.raises(api.CacheKeyError, match=r"argument 0\[1\]\['k'\] \(builtins.object\)"):
        digest([1, {"k": object()}])
    assert issubclass(api.CacheKeyError, TypeError)
    assert issubclass(api.CacheKeyError, api.ShoalError)


def test_ignore_for_cache_names_are_checked():
    def f(a, b):
        return a

    with pytest.raises(ValueError, match="not parameters"):
        api.python_app(f, cache=True, ignore_for_cache=["c"])
    with pytest.raises(ValueError, match="list of parameter names"):
        api.python_app(f, cache=True, ignore_for_cache="a")
    with pytest.raises(ValueError, match="cache="):
        api.python_app(f, cache="yes")


def test_an_output_of_a_failed_producer_is_a_failed_dependency_not_a_key(tmp_path):
    """As for an app future: a cached consumer must fail with DependencyError, not hit."""
    from api._files import DataFuture
    from api._futures import AppFuture

    producer = AppFuture(1, "produce", None)
    out = DataFuture(producer, api.File(str(tmp_path / "out.txt")))
    producer.set_exception(ValueError("boom"))
    with pytest.raises(_memo.DependencyFailed):
        _memo.Hasher().feed(out, "argument 'inputs'[0]")
    ok = AppFuture(2, "produce", None)
    done = DataFuture(ok, api.File(str(tmp_path / "out.txt")))
    ok.set_result(0)
    h = _memo.Hasher()
    h.feed(done, "argument 'inputs'[0]")
    assert h.digest()


def test_call_key_binds_arguments_and_ignores():
    def f(a, b=0, note=""):
        return a + b

    app = api.python_app(f, cache=True, ignore_for_cache=["note"])
    key = _memo.call_key(app, (1, 2), {}, [], None)
    assert _memo.call_key(app, (1,), {"b": 2}, [], None) == key
    assert _memo.call_key(app, (1, 2), {"note": "hi"}, [], None) == key
    assert _memo.call_key(app, (1, 3), {}, [], None) != key
    with pytest.raises(TypeError, match="app 'f'"):
        _memo.call_key(app, (1, 2, 3, 4), {}, [], None)


def test_file_urls_and_paths():
    f = api.File("file:///tmp/some%20file.txt")
    assert f.path == "/tmp/some file.txt" and str(f) == f.path and os.fspath(f) == f.path
    assert api.File("rel/x.txt").path == os.path.abspath("rel/x.txt")
    assert api.File("file://localhost/tmp/a").path == "/tmp/a"
    with pytest.raises(ValueError, match="globus://"):
        api.File("globus://ep/path")
    with pytest.raises(ValueError, match="host 'other'"):
        api.File("file://other/tmp/a")
    with pytest.raises(TypeError, match="int"):
        api.File(3)


# ---- the store ---------------------------------------------------------------------------
def test_a_large_result_that_cannot_be_written_loses_only_itself(tmp_path, monkeypatch):
    """A full disk on one result's file: the rest of the batch is still written."""
    store = CheckpointStore(str(tmp_path / "ck"))
    real = store._write_file  # noqa: SLF001 - the one write that fails

    def full(file, enc):
        if file.startswith("bad"):
            raise OSError(28, "No space left on device")
        real(file, enc)

    monkeypatch.setattr(store, "_write_file", full)
    big = np.arange(1 << 18, dtype=np.float64)
    records = [Record("a", "app", 1), Record("bad", "app", big), Record("b", "app", 2),
               Record("c", "app", big)]
    assert store.write_many(records) == 3
    assert store.get("bad") is None
    assert (store.get("a").value, store.get("b").value) == (1, 2)
    assert np.array_equal(store.get("c").value, big)


def test_store_round_trips_small_and_large_results(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    big = np.arange(1 << 18, dtype=np.float64)
    assert store.write(Record("k1", "app", {"x": 1}, "/o", None))
    assert store.write(Record("k2", "app", big))
    store.close()
    store = CheckpointStore(str(tmp_path / "ck"))
    e1, e2 = store.get("k1"), store.get("k2")
    assert e1.value == {"x": 1} and e1.stdout == "/o"
    assert np.array_equal(e2.value, big) and not e2.value.flags.writeable  # mapped
    assert store.get("nope") is None
    mode = sqlite3.connect(str(tmp_path / "ck" / "index.sqlite")).execute(
        "PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert os.stat(tmp_path / "ck").st_mode & 0o077 == 0


def test_damaged_file_is_a_miss_and_is_dropped(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    store.write(Record("k", "app", np.ones(1 << 16)))
    path = tmp_path / "ck" / "objects" / "k.obj"
    with open(path, "r+b") as f:
        f.truncate(100)
    assert store.get("k") is None
    assert "k" not in store and not path.exists()


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    store.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import socket

    objects = tmp_path / "ck" / "objects"
    stale = objects / f".tmp.{socket.gethostname()}.{dead}.k.obj"
    mine = objects / f".tmp.{socket.gethostname()}.{os.getpid()}.j.obj"
    stale.write_bytes(b"partial")
    mine.write_bytes(b"in progress")
    old_foreign = objects / ".tmp.otherhost.123.a.obj"
    new_foreign = objects / ".tmp.otherhost.124.b.obj"
    old_foreign.write_bytes(b"x")
    new_foreign.write_bytes(b"y")
    os.utime(old_foreign, (1, 1))
    CheckpointStore(str(tmp_path / "ck")).close()
    assert not stale.exists() and mine.exists()
    assert not old_foreign.exists() and new_foreign.exists()


def test_results_holding_refs_are_not_checkpointed(tmp_path):
    from cluster.common.serialization import ObjectRef

    store = CheckpointStore(str(tmp_path / "ck"))
    assert not store.write(Record("k", "app", [ObjectRef(5)]))
    assert store.count() == 0


def test_bad_init_options_name_the_option():
    with pytest.raises(ValueError, match="checkpoint_mode='sometimes'"):
        _cache.check_options(None, "sometimes", 60)
    with pytest.raises(ValueError, match="checkpoint_period=0"):
        _cache.check_options(None, "periodic", 0)
    with pytest.raises(ValueError, match="checkpoint_dir=3"):
        _cache.check_options(3, "task_exit", 60)


def test_types_can_name_their_own_key():
    class Version:
        def __init__(self, text):
            self.text = text

        def __shoal_cache_key__(self):
            return self.text

    assert digest(Version("1.2")) == digest(Version("1.2")) != digest(Version("1.3"))
    assert digest(api.AUTO_LOGNAME) == digest(api.AUTO_LOGNAME)


def test_options_can_turn_the_cache_on():
    def f(a):
        return a

    app = api.python_app(f)
    assert not app.cache and app.options(cache=True).cache
    assert app.options(cache=True, ignore_for_cache=["a"]).ignore_for_cache == ("a",)


def test_an_unusable_checkpoint_dir_fails_before_anything_starts(tmp_path):
    if api.is_initialized():
        pytest.skip("a session is active in this process")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="checkpoint_dir=.*cannot create it"):
        api.init(checkpoint_dir=str(not_a_dir / "ck"))
    assert not api.is_initialized()


def test_write_many_commits_small_results_together_and_large_ones_with_their_file(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"))
    records = [Record(f"s{i}", "app", i) for i in range(50)]
    records.insert(20, Record("big", "app", np.arange(1 << 16)))
    from cluster.common.serialization import ObjectRef

    records.insert(10, Record("refs", "app", [ObjectRef(1)]))
    assert store.write_many(records) == 51  # (the one holding a ref is skipped)
    assert store.count() == 51
    assert [store.get(f"s{i}").value for i in range(50)] == list(range(50))
    assert np.array_equal(store.get("big").value, np.arange(1 << 16))
