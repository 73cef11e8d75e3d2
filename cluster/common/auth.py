"""Cluster secret: made at `up`, carried by every RPC, checked before any payload is parsed.

A cluster's secret reaches daemons and drivers through the environment or the 0600 cluster
file, never through a command line. The server interceptor answers UNAUTHENTICATED with a
handler that has no request deserializer, so a refused call's bytes are never parsed (and
cloudpickle payloads never unpickled).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from typing import Any

METADATA_KEY = "x-shoal-secret"
ENV_VAR = "SHOAL_SECRET"


def new_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def call_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """Metadata to attach to every call made to a cluster with `secret`."""
    return ((METADATA_KEY, secret),)


def server_interceptor(secret: str) -> Any:
    """A grpc.aio server interceptor rejecting every call that lacks `secret`.

    The secret is compared in constant time. A refused call is answered by a handler with
    no request deserializer, so its payload is never parsed. (gRPC is imported here, not
    at module level: drivers and workers use this module without it.)
    """
    import grpc

    def deny(kind: Any) -> Any:
        async def refuse(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong cluster secret")

        if kind is None or (not kind.request_streaming and not kind.response_streaming):
            return grpc.unary_unary_rpc_method_handler(refuse)
        if kind.request_streaming and kind.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if kind.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        return grpc.unary_stream_rpc_method_handler(refuse)

    expected = secret.encode()

    class AuthInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            given = b""
            for key, value in details.invocation_metadata or ():
                if key == METADATA_KEY:
                    given = value.encode() if isinstance(value, str) else value
                    break
            if hmac.compare_digest(given, expected):
                return await continuation(details)
            # Looking the handler up parses nothing; it tells us the call's shape.
            return deny(await continuation(details))

    return AuthInterceptor()


def read_secret(secret_file: str = "") -> tuple[str, dict[str, str]]:
    """A daemon's secret and its cluster file's ``extra`` (TLS material): from
    `secret_file` (a cluster file, or a file holding just the secret) when given, else from
    ``$SHOAL_SECRET``, which is removed from the environment either way (so workers never
    inherit it). Raises SystemExit with a one-line reason when there is none."""
    secret = os.environ.pop(ENV_VAR, "")
    extra: dict[str, str] = {}
    if secret_file:
        try:
            with open(secret_file) as f:
                text = f.read()
            if text.lstrip().startswith("{"):
                data = json.loads(text)
                secret = data["secret"]
                extra = data.get("extra") or {}
            else:
                secret = text.strip()
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"cannot read the secret from {secret_file}: {err}") from None
    if not secret:
        raise SystemExit(f"the cluster secret must be in ${ENV_VAR} or a --secret-file")
    return secret, extra


def dashboard_token(secret: str) -> str:
    """The dashboard's access token: derived from the cluster secret (HMAC-SHA256), so
    whoever holds the token cannot recover the secret or call the cluster's RPCs.

    >>> dashboard_token("s") == dashboard_token("s") != dashboard_token("t")
    True
    """
    import hashlib
    import hmac

    return hmac.new(secret.encode(), b"shoal dashboard token v1", hashlib.sha256).hexdigest()[:40]
