"""Bad input with real processes: one clear line, never a timeout or a bare stack trace."""

from __future__ import annotations

import pytest

import api
from api import _session
from cluster.common import clusterfile


def test_embedded_cluster_that_exits_at_start_reports_its_own_error(no_session):
    # Bypasses api.init's validation to reach the daemon with a value it cannot use.
    with pytest.raises(api.ConnectionError, match="exited at start") as info:
        _session.start_embedded(None, None, {"x": "a"}, 60)  # type: ignore[dict-item]
    message = str(info.value)
    assert "did not start within" not in message
    assert "'a'" in message and "float" in message


def test_down_scrubs_the_secret_and_a_second_down_exits_0(clusterctl, no_session):
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", "bad-input-down")
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for("bad-input-down"))
    assert cf.secret
    down = clusterctl("down", "--cluster", "bad-input-down")
    assert down.returncode == 0, down.stderr
    after = clusterfile.read(cf.path)
    assert after.state == "down" and after.secret == ""
    assert cf.secret not in open(cf.path).read()
    assert after.head_pid == cf.head_pid and after.runtime_dir == cf.runtime_dir
    again = clusterctl("down", "--cluster", "bad-input-down")
    assert again.returncode == 0 and "already down" in again.stdout
    with pytest.raises(api.ConnectionError, match="bad-input-down .* is down"):
        api.init(cf.path)


def test_a_cluster_directory_in_the_working_directory_is_named(no_session, tmp_path,
                                                               monkeypatch):
    # A user's own cluster/ package where the driver runs comes first on the path of the
    # processes started there: the head cannot start, and the error says why.
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(api.ConnectionError, match="exited at start") as info:
        _session.start_embedded(1, None, None, 60)
    message = str(info.value)
    assert f"{tmp_path}/cluster/ hides shoal's own package" in message
    assert "start from another directory" in message
