"""Connecting: addresses, cluster files, secrets; and every RPC refused without the secret."""

from __future__ import annotations

import os
import pickle
import socket
import time

import grpc
import pytest

import api
from cluster.common import auth, clusterfile
from cluster.common.protocol import pb


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.timeout(30)   # a hang guard, not a timing assert
def test_dead_address_raises_connection_error_quickly(no_session, monkeypatch):
    monkeypatch.setenv("SHOAL_SECRET", "whatever")
    address = f"127.0.0.1:{_dead_port()}"
    with pytest.raises(api.ConnectionError) as info:
        api.init(address, timeout=2)
    assert address in str(info.value) and "tried" in str(info.value)
    assert isinstance(info.value, ConnectionError), "must also be the builtin ConnectionError"


def test_malformed_address_is_a_value_error(no_session):
    with pytest.raises(ValueError, match="host:port"):
        api.init("not an address at all")


def test_unknown_secret_for_address_says_what_to_do(no_session, monkeypatch):
    monkeypatch.delenv("SHOAL_SECRET", raising=False)
    with pytest.raises(api.ConnectionError, match="no secret known"):
        api.init("127.0.0.1:1")


def test_missing_cluster_file(no_session, tmp_path):
    with pytest.raises(api.ConnectionError, match="not a readable shoal cluster file"):
        api.init(str(tmp_path / "nope.json"))


def test_auto_without_a_cluster_lists_what_it_found(no_session):
    with pytest.raises(api.ConnectionError, match="exactly one running cluster"):
        api.init("auto")


def test_not_initialized_error_is_clear(no_session):
    @api.python_app
    def f():
        return 1

    with pytest.raises(api.ShoalError, match="api.init"):
        f()


def test_init_twice_is_refused_unless_asked(cluster):
    with pytest.raises(api.ShoalError, match="already called"):
        api.init()
    info = api.init(ignore_reinit_error=True)
    assert info.embedded and info.nodes[0]["cpus"] == 2


@pytest.fixture
def running_cluster(clusterctl):
    out = clusterctl("up", "--num-cpus", "1", "--cluster-id", "auth-test")
    assert out.returncode == 0, out.stderr
    cf = clusterfile.read(clusterfile.path_for("auth-test"))
    yield cf
    clusterctl("down", "--cluster", "auth-test")


def _poisoned_submit(marker: str) -> bytes:
    """A DriverToHead whose task arguments, if ever unpickled, create `marker`."""

    class Mark:
        def __reduce__(self):
            return (open, (marker, "w"))

    args = pickle.dumps(((Mark(),), {}))
    fn = pickle.dumps(len)
    spec = pb.TaskSpec(task_id=(7 << 40) | 1, fn_id=b"f" * 16, fn_blob=fn, name="poison",
                       args=args)
    hello = pb.DriverToHead(hello=pb.DriverHello(hostname="attacker", pid=1))
    return hello.SerializeToString(), pb.DriverToHead(submit=[spec]).SerializeToString()


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
def test_every_rpc_is_refused_without_the_right_secret(running_cluster, tmp_path, secret):
    marker = str(tmp_path / "executed")
    hello, poison = _poisoned_submit(marker)
    metadata = auth.call_metadata(secret) if secret else None
    with grpc.insecure_channel(running_cluster.address) as channel:
        status = channel.unary_unary("/shoal.Head/Status",
                                     response_deserializer=pb.StatusReply.FromString)(
            pb.StatusRequest().SerializeToString(),
            metadata=auth.call_metadata(running_cluster.secret), timeout=5)
    # (The node stores' objects lane is framed protobuf, not gRPC: test_objects_lane.py.)
    where = {"Head": running_cluster.address}
    assert status.nodes
    assert set(where) == set(pb.DESCRIPTOR.services_by_name), "a service is not walked"
    tried = []
    for name, target in where.items():
        service = pb.DESCRIPTOR.services_by_name[name]
        with grpc.insecure_channel(target) as channel:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if method.client_streaming:
                    requests = iter([hello, poison])
                else:
                    requests = poison
                if method.client_streaming and method.server_streaming:
                    call = channel.stream_stream(path)(requests, metadata=metadata, timeout=5)
                    with pytest.raises(grpc.RpcError) as info:
                        list(call)
                elif method.client_streaming:
                    with pytest.raises(grpc.RpcError) as info:
                        channel.stream_unary(path)(requests, metadata=metadata, timeout=5)
                elif method.server_streaming:
                    with pytest.raises(grpc.RpcError) as info:
                        list(channel.unary_stream(path)(requests, metadata=metadata, timeout=5))
                else:
                    with pytest.raises(grpc.RpcError) as info:
                        channel.unary_unary(path)(requests, metadata=metadata, timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
                tried.append(path)
    assert len(tried) == sum(len(s.methods) for s in pb.DESCRIPTOR.services_by_name.values())
    assert len(tried) >= 4
    time.sleep(1.0)
    assert not os.path.exists(marker), "a refused payload was unpickled"
    # The cluster is unharmed (Shutdown was refused too) and serves the right secret.
    with grpc.insecure_channel(running_cluster.address) as channel:
        reply = channel.unary_unary("/shoal.Head/Status",
                                    response_deserializer=pb.StatusReply.FromString)(
            pb.StatusRequest().SerializeToString(),
            metadata=auth.call_metadata(running_cluster.secret), timeout=5)
    assert reply.cluster_id == "auth-test"


def test_wrong_secret_from_api_is_a_clear_connection_error(no_session, running_cluster,
                                                         monkeypatch):
    monkeypatch.setenv("SHOAL_SECRET", "not-the-secret")
    cf_path = clusterfile.path_for("auth-test")
    os.rename(cf_path, cf_path + ".hidden")  # so the address is not matched to the file
    try:
        with pytest.raises(api.ConnectionError, match="refused our secret"):
            api.init(running_cluster.address, timeout=5)
    finally:
        os.rename(cf_path + ".hidden", cf_path)


def test_connect_by_address_cluster_file_and_auto(no_session, running_cluster):
    @api.python_app
    def host():
        return socket.gethostname()

    for address in (running_cluster.address, running_cluster.path, "auto"):
        info = api.init(address, timeout=5)
        assert info.cluster_id == "auth-test"
        assert host().result(timeout=30) == socket.gethostname()
        api.shutdown()


def test_secret_is_never_on_a_command_line(running_cluster):
    secret = running_cluster.secret.encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert secret not in f.read(), f"secret visible in argv of pid {pid}"
            except OSError:
                continue


def test_cluster_file_is_private(running_cluster):
    mode = os.stat(running_cluster.path).st_mode & 0o777
    assert mode == 0o600
    assert os.stat(os.path.dirname(running_cluster.path)).st_mode & 0o077 == 0
    assert os.stat(running_cluster.runtime_dir).st_mode & 0o777 == 0o700


def test_poisoned_payload_does_run_with_the_right_secret(running_cluster, tmp_path):
    """Positive control for the refusal test: the same payload, authenticated, executes."""
    marker = str(tmp_path / "executed")
    hello, poison = _poisoned_submit(marker)
    with grpc.insecure_channel(running_cluster.address) as channel:
        call = channel.stream_stream("/shoal.Head/DriverStream")(
            iter([hello, poison]), metadata=auth.call_metadata(running_cluster.secret),
            timeout=10)
        deadline = time.monotonic() + 10
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        call.cancel()
    assert os.path.exists(marker)


def test_local_driver_lane_refuses_a_wrong_secret_before_parsing(running_cluster, tmp_path):
    from cluster.common import wire

    marker = str(tmp_path / "executed")
    hello, poison = _poisoned_submit(marker)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(running_cluster.unix_socket)
        sock.sendall(wire.frame(b"wrong") + wire.frame(hello) + wire.frame(poison))
        reply = sock.recv(100)
        assert reply == wire.frame(b"UNAUTHENTICATED")
        assert sock.recv(100) == b"", "the head must close the connection"
    time.sleep(1.0)
    assert not os.path.exists(marker)


def test_local_driver_lane_socket_is_private(running_cluster):
    assert os.path.exists(running_cluster.unix_socket)
    assert os.stat(os.path.dirname(running_cluster.unix_socket)).st_mode & 0o777 == 0o700
    assert len(running_cluster.unix_socket.encode()) < 107


def test_a_node_stores_objects_lane_refuses_a_wrong_secret(running_cluster):
    from cluster.common import wire

    with grpc.insecure_channel(running_cluster.address) as channel:
        status = channel.unary_unary("/shoal.Head/Status",
                                     response_deserializer=pb.StatusReply.FromString)(
            pb.StatusRequest().SerializeToString(),
            metadata=auth.call_metadata(running_cluster.secret), timeout=5)
    store_socket = os.path.join(status.nodes[0].store_dir, "objects.sock")
    request = pb.ObjectsRequest(allocate=pb.AllocRequest(size=1000)).SerializeToString()
    for secret in (b"", b"wrong-secret"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(store_socket)
            sock.sendall(wire.frame(secret) + wire.frame(request))
            assert sock.recv(100) == wire.frame(b"UNAUTHENTICATED")
            assert sock.recv(100) == b"", "the daemon must close the connection"
    assert os.listdir(status.nodes[0].store_dir) == ["objects.sock"], "a refused call allocated"


def _as_seen_from_another_host(cf: clusterfile.ClusterFile, tmp_path, **changes) -> str:
    """A copy of `cf` as a driver on another host reads it: the head's Unix socket is on
    the head's host, so only its TCP addresses are of use."""
    import dataclasses
    import json

    data = {**dataclasses.asdict(cf), "host": "elsewhere", "unix_socket": "", **changes}
    path = tmp_path / "from-elsewhere.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_driver_on_another_host_uses_the_tcp_driver_lane(no_session, running_cluster,
                                                           tmp_path):
    assert running_cluster.lane_address.rsplit(":", 1)[0] == \
        running_cluster.address.rsplit(":", 1)[0]
    assert running_cluster.lane_address != running_cluster.address
    info = api.init(_as_seen_from_another_host(running_cluster, tmp_path), timeout=10)
    client = api._session.client()
    assert client.address == f"tcp:{running_cluster.lane_address}"
    assert info.address == running_cluster.address, "the address api.init() can be given"

    @api.python_app
    def add(a, b):
        return a + b

    futures = [add(i, i) for i in range(200)]
    assert [f.result(timeout=60) for f in futures] == [2 * i for i in range(200)]
    assert add(add(1, 2), add(3, 4)).result(timeout=60) == 10
    assert api.get(api.put(b"x" * 300_000)) == b"x" * 300_000


def test_a_dead_tcp_lane_falls_back_to_grpc(no_session, running_cluster, tmp_path):
    path = _as_seen_from_another_host(running_cluster, tmp_path,
                                      lane_address=f"127.0.0.1:{_dead_port()}")
    api.init(path, timeout=10)
    assert type(api._session.client()._transport).__name__ == "GrpcTransport"


def test_the_tcp_driver_lane_refuses_a_wrong_secret_before_parsing(running_cluster, tmp_path):
    from cluster.common import wire

    marker = str(tmp_path / "executed")
    hello, poison = _poisoned_submit(marker)
    host, port = running_cluster.lane_address.rsplit(":", 1)
    for secret in (b"", b"wrong"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(wire.frame(secret) + wire.frame(hello) + wire.frame(poison))
            assert sock.recv(100) == wire.frame(b"UNAUTHENTICATED")
            assert sock.recv(100) == b"", "the head must close the connection"
    time.sleep(1.0)
    assert not os.path.exists(marker), "a refused payload was unpickled"


def test_a_wrong_secret_over_the_tcp_lane_is_a_clear_error(no_session, running_cluster,
                                                           tmp_path):
    path = _as_seen_from_another_host(running_cluster, tmp_path, secret="not-the-secret")
    with pytest.raises(api.ConnectionError, match="refused our secret"):
        api.init(path, timeout=5)
