"""One way to start a gRPC server: asyncio, insecure port on the service's host, health checking."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import SecretStr

from flywheel.auth import admin_key_matches

log = logging.getLogger(__name__)


def peer_host(peer: str) -> str:
    """The caller's address in a gRPC peer string, without scheme or port.

    'ipv4:10.0.0.7:5123' gives '10.0.0.7'; 'ipv6:%5B::1%5D:5123' (gRPC escapes the brackets) and
    'ipv6:[::1]:5123' give '::1', as HTTP's `request.client.host` names the same caller.
    """
    _, _, address = unquote(peer).partition(":")
    if address.startswith("[") and "]" in address:
        return address[1 : address.index("]")]
    host, sep, port = address.rpartition(":")
    return host if sep and port.isdigit() else address


async def require_admin(context: grpc.aio.ServicerContext, admin_key: SecretStr) -> None:
    """Abort the call with UNAUTHENTICATED unless its metadata carries the admin key."""
    metadata = dict(context.invocation_metadata() or ())
    if not admin_key_matches(metadata.get("authorization"), admin_key):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the admin key is required (authorization: Bearer <key>)")


async def start_grpc_server(
    register: Callable[[grpc.aio.Server], None],
    service_name: str,
    host: str,
    port: int,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.aio.Server:
    """Start a server with `register(server)`'s servicers; health reports SERVING once it listens."""
    server = grpc.aio.server(options=list(options))
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")  # IPv6 in brackets
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s on %s:%d", service_name, host, bound)
    return server
