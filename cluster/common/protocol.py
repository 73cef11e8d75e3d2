"""The generated protobuf messages plus the small conversions everyone needs.

The gRPC stubs (``cluster.shoal_pb2_grpc``) are imported only where gRPC is used, so a
driver on the head's host and the workers never pay for importing gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.common import shoal_pb2 as pb

__all__ = ["pb", "to_dict", "fill", "CHANNEL_OPTIONS", "SERVER_OPTIONS"]


# Values travel inline in messages (until the object store takes large ones), so lift
# gRPC's 4 MB default; keepalive makes a vanished peer visible on an idle stream.
MAX_MESSAGE = 1 << 30
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def to_dict(res: pb.Resources) -> dict[str, float]:
    """Resources message -> {"cpus": .., "gpus": .., "memory": .., custom...}, zeros dropped."""
    out: dict[str, float] = {}
    if res.cpus:
        out["cpus"] = res.cpus
    if res.gpus:
        out["gpus"] = res.gpus
    if res.memory:
        out["memory"] = res.memory
    for key, value in res.custom.items():
        if value:
            out[key] = value
    return out


def fill(res: pb.Resources, values: Mapping[str, float]) -> pb.Resources:
    """Write a resources dict into a Resources message (returns it)."""
    for key, value in values.items():
        if key == "cpus":
            res.cpus = value
        elif key == "gpus":
            res.gpus = value
        elif key == "memory":
            res.memory = value
        else:
            res.custom[key] = value
    return res
