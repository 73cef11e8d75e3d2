"""Cluster secret: made at `up`, carried by every RPC, checked before any payload is parsed.

A cluster's secret reaches daemons and drivers through the environment or the 0600 cluster
file, never through a command line. The server interceptor answers UNAUTHENTICATED with a
handler that has no request deserializer, so a refused call's bytes are never parsed (and
cloudpickle payloads never unpickled).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

METADATA_KEY = "x-shoal-secret"
ENV_VAR = "SHOAL_SECRET"


def new_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def call_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """Metadata to attach to every call made to a cluster with `secret`."""
    return ((METADATA_KEY, secret),)


def _deny(kind: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster secret")

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster secret")

    # No request_deserializer: a refused call's payload stays raw bytes, never parsed.
    if kind is None or (not kind.request_streaming and not kind.response_streaming):
        return grpc.unary_unary_rpc_method_handler(unary)
    if kind.request_streaming and kind.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if kind.request_streaming:
        return grpc.stream_unary_rpc_method_handler(streaming)
    return grpc.unary_stream_rpc_method_handler(streaming)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call whose metadata lacks the cluster secret (constant-time compare)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        given = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(given, self._secret):
            return await continuation(handler_call_details)
        # Looking the handler up deserializes nothing; it tells us the call's shape.
        return _deny(await continuation(handler_call_details))
