"""`clusterctl up --tls`: verified TLS on every gRPC path and on the node lane; plaintext
and wrong CAs fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from helpers import ROOT

import api
from cluster.common import clusterfile
from cluster.common import shoal_pb2_grpc as pb_grpc
from cluster.common.protocol import pb


@pytest.fixture
def tls_cluster(clusterctl, no_session):
    out = clusterctl("up", "--tls", "--num-cpus", "1", "--cluster-id", "tls")
    assert out.returncode == 0, out.stderr
    cf = clusterfile.read(clusterfile.path_for("tls"))
    yield cf
    api.shutdown()
    clusterctl("down", "--cluster", "tls")


def test_ca_is_published_and_status_works_over_tls(tls_cluster, clusterctl):
    assert tls_cluster.extra["tls_ca"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls_cluster.lane_address == "", "a --tls head serves no plain TCP driver lane"
    assert tls_cluster.node_lane_address, "its node lane is TLS"
    status = clusterctl("status", "--cluster", "tls")
    assert status.returncode == 0 and "cluster tls" in status.stdout


def test_plaintext_client_cannot_talk_to_a_tls_head(tls_cluster):
    with grpc.insecure_channel(tls_cluster.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.HeadStub(channel).Status(pb.StatusRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_with_another_ca_is_refused(tls_cluster, monkeypatch):
    from cluster.common.tls import make_certificates

    other_ca, _, _ = make_certificates(["127.0.0.1"])
    cf_path = clusterfile.path_for("tls")
    os.rename(cf_path, cf_path + ".hidden")
    monkeypatch.setenv("SHOAL_SECRET", tls_cluster.secret)
    monkeypatch.setenv("SHOAL_TLS_CA", other_ca.decode())
    try:
        with pytest.raises(api.ConnectionError, match="TLS certificate did not verify"):
            api.init(tls_cluster.address, timeout=3)
    finally:
        os.rename(cf_path + ".hidden", cf_path)


@pytest.mark.parametrize("link", ["lane", "grpc"])
def test_driver_and_remote_daemon_work_over_tls(tls_cluster, link):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("SHOAL_SECRET", None)
    address = f"tcp:{tls_cluster.node_lane_address}" if link == "lane" else tls_cluster.address
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", "tls",
         "--head-address", address, "--secret-file", tls_cluster.path,
         "--node-name", "tls-second", "--num-cpus", "2", "--resources", '{"far": 1}'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        api.init(tls_cluster.address)      # by address: the gRPC path, verified against the CA
        assert type(api._session.client()._transport).__name__ == "GrpcTransport"

        @api.python_app(resources={"far": 1})
        def on_second():
            return os.getppid()

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(api._session.client().nodes) < 2:
            time.sleep(0.1)
        assert on_second().result(timeout=60) == daemon.pid
        with open(f"/proc/{daemon.pid}/maps") as f:
            assert ("cygrpc" in f.read()) == (link == "grpc")
    finally:
        daemon.kill()


def test_the_node_lane_takes_no_plaintext_and_no_other_ca(tls_cluster, tmp_path):
    import socket

    from cluster.common import wire
    from cluster.common.tls import make_certificates

    host, port = tls_cluster.node_lane_address.rsplit(":", 1)
    register = pb.NodeToHead(register=pb.Register(name="plain", address="127.0.0.1", pid=1))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(wire.frame(tls_cluster.secret.encode()) +
                     wire.frame(register.SerializeToString()))
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", "a plaintext client got an answer"
    # A daemon holding another CA (and the secret) does not verify the head: it never joins.
    other_ca, _, _ = make_certificates(["127.0.0.1"])
    secret_file = tmp_path / "other.json"
    secret_file.write_text(json.dumps({"cluster_id": "tls", "address": tls_cluster.address,
                                       "secret": tls_cluster.secret,
                                       "extra": {**tls_cluster.extra,
                                                 "tls_ca": other_ca.decode()}}))
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("SHOAL_SECRET", None)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cluster.node", "--daemon", "--cluster-id", "tls",
         "--head-address", f"tcp:{tls_cluster.node_lane_address}", "--secret-file",
         str(secret_file), "--node-name", "other-ca", "--num-cpus", "1", "--head-timeout",
         "2", "--log-dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert daemon.wait(timeout=120) is not None   # gave up after --head-timeout
        log = (tmp_path / "daemon-other-ca.log").read_text()
        assert "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]
        api.init(tls_cluster.path)
        assert "other-ca" not in [n.name for n in api._session.client().nodes.values()]
        assert "plain" not in [n.name for n in api._session.client().nodes.values()]
    finally:
        if daemon.poll() is None:
            daemon.kill()


def test_objects_move_over_tls_and_plain_tcp_gets_nothing(tls_cluster, monkeypatch):
    import socket
    import struct

    import numpy as np

    from cluster.store import transfer

    monkeypatch.setenv("SHOAL_OBJECTS_VIA_NETWORK", "1")  # as a driver on another host
    api.init(tls_cluster.path)
    array = np.arange(3_000_000, dtype=np.float64)
    ref = api.put(array)                                   # pushed over TLS
    assert np.array_equal(api.get(ref), array)             # fetched over TLS

    @api.python_app
    def total(a):
        return float(a.sum())

    assert total(ref).result(timeout=60) == float(array.sum())
    node = next(iter(api._session.client().nodes.values()))
    # Speaking plaintext to the transfer server (even with the secret) yields no bytes.
    host, port = node.store_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        key = tls_cluster.secret.encode()
        sock.sendall(struct.pack("<I", len(key)) + key + b"G" + struct.pack("<QQ", ref.id, 0))
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"\x00"), "a plaintext client got an object"
    with pytest.raises(OSError):
        transfer.fetch(node.store_address, tls_cluster.secret, ref.id, transfer.Buffer,
                       tls=None)


def test_actors_take_no_plain_tcp_calls_on_a_tls_cluster(tls_cluster):
    api.init(tls_cluster.path)

    @api.actor
    class Echo:
        def back(self, x):
            return x

    echo = Echo()
    assert echo.back(3).result(timeout=60) == 3
    route = api._session.client().direct.routes[echo.actor_id].route
    assert route.endswith("|"), f"no TCP address in the route: {route}"
