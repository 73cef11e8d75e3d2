"""After the head dies, every call that needs it raises api.ConnectionError at once
(it used to wait its whole timeout, or queue messages nobody would read)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import api
from cluster.common import clusterfile, paths


@api.python_app
def echo(x):
    return x


@api.actor
class Named:
    def ping(self):
        return "pong"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["lane", "grpc"])
def test_every_call_fails_fast_once_the_head_is_killed(no_session, clusterctl, transport):
    cluster_id = f"dead-head-{transport}"
    up = clusterctl("up", "--num-cpus", "1", "--cluster-id", cluster_id)
    assert up.returncode == 0, up.stderr
    cf = clusterfile.read(clusterfile.path_for(cluster_id))
    try:
        api.init(cf.path if transport == "lane" else cf.address)
        small = api.put("small")
        big = api.put(b"x" * 1_000_000)            # in the node store, read there directly
        assert echo(1).result(timeout=60) == 1
        handle = Named.options(name="named")()
        assert handle.ping().result(timeout=60) == "pong"
        os.kill(cf.head_pid, signal.SIGKILL)
        while paths.pid_alive(cf.head_pid):
            time.sleep(0.05)
        # Each would wait 120 s if it waited its timeout: the test's 90 s limit catches it.
        with pytest.raises(api.ConnectionError):
            api.get(small, timeout=120)
        with pytest.raises(api.ConnectionError):
            api.get(small, timeout=120)
        with pytest.raises(api.ConnectionError):
            api.get([big], timeout=120)
        with pytest.raises(api.ConnectionError):
            api.put("more")
        with pytest.raises(api.ConnectionError):
            api.put(b"y" * 1_000_000)
        with pytest.raises(api.ConnectionError):
            api.get_actor("named", timeout=120)
        with pytest.raises(api.ConnectionError):
            echo(2)
        with pytest.raises(api.ConnectionError):
            api.kill(handle)
        with pytest.raises(api.ConnectionError):
            Named()
    finally:
        api.shutdown()
        clusterctl("down", "--cluster", cluster_id)
