"""One way to start a gRPC server: asyncio, insecure port on the service's host, health checking, and
requests that are no message of their type answered INVALID_ARGUMENT (grpc's own answer is UNKNOWN).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError
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


class DecodeRequests(grpc.aio.ServerInterceptor):
    """Parse each request inside the call, so that bytes which are no message of its type get
    INVALID_ARGUMENT with the reason; grpc parses them before the handler and answers UNKNOWN
    ("Unexpected DecodeError"), a server error for what is the client's."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        async def parsed(data: bytes, context: grpc.aio.ServicerContext):
            try:
                return parse(data)
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {exc}")

        if handler.unary_unary is not None:
            async def unary_unary(data, context):
                return await handler.unary_unary(await parsed(data, context), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            async def stream_unary(requests: AsyncIterator[bytes], context):
                async def each():
                    async for data in requests:
                        yield await parsed(data, context)

                return await handler.stream_unary(each(), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=handler.response_serializer)
        return handler  # unary-stream and stream-stream: none in Flywheel's services


async def start_grpc_server(
    register: Callable[[grpc.aio.Server], None],
    service_name: str,
    host: str,
    port: int,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.aio.Server:
    """Start a server with `register(server)`'s servicers; health reports SERVING once it listens."""
    server = grpc.aio.server(options=list(options), interceptors=[DecodeRequests()])
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
