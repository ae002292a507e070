"""ASGI middleware shared by the HTTP services: admin paths, body-size limit and request metrics.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses are measured to their last byte
and are not buffered.
"""

from __future__ import annotations

import json
import time

from fastapi import Request
from prometheus_client import Counter, Gauge, Histogram
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.auth import Unauthorized, admin_key_matches, resolve_user
from flywheel.errors import APIError, error_body

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_ADMIN_REQUIRED = "this route needs the admin key (Authorization: Bearer <admin key>)"


def caller_id(request: Request, authorization: str | None) -> str:
    """The user behind an HTTP request (API key, or anonymous by address); 401 otherwise."""
    state = request.app.state
    client = request.client.host if request.client else None
    try:
        return resolve_user(authorization, state.api_keys, state.settings.allow_anonymous, client)
    except Unauthorized as exc:
        raise APIError(401, str(exc), type_="authentication_error", code="invalid_api_key") from None


class RequestGuard:
    """Refuses bodies over `max_body_bytes` with 413 and records requests by route and status.

    Requests to `admin_paths` without the admin key get 401 before their body is read, so a
    caller without the key cannot make the service take in an admin route's large bodies.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        requests: Counter,
        latency: Histogram,
        in_flight: Gauge,
        path_limits: dict[str, int] | None = None,
        admin_paths: frozenset[str] = frozenset(),
        admin_key: SecretStr | None = None,
    ) -> None:
        if admin_paths and admin_key is None:
            raise ValueError("admin_paths need the admin_key")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = path_limits or {}
        self.admin_paths = admin_paths
        self.admin_key = admin_key
        self.requests = requests
        self.latency = latency
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            if scope["path"] in self.admin_paths and not self._is_admin(scope):
                await _send_error(send_wrapper, 401, _ADMIN_REQUIRED, "authentication_error", "invalid_admin_key")
                return
            if scope["method"] in _BODY_METHODS:
                limit = self.path_limits.get(scope["path"], self.max_body_bytes)
                body = await self._read_body(scope, receive, limit)
                if body is None:
                    await self._too_large(send_wrapper, limit)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_wrapper)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded label values
            self.requests.labels(label, method, str(status["code"])).inc()
            self.latency.labels(label).observe(time.perf_counter() - started)

    def _is_admin(self, scope: Scope) -> bool:
        authorization = next((v for k, v in scope.get("headers", []) if k == b"authorization"), None)
        if authorization is None:
            return False
        return admin_key_matches(authorization.decode("latin-1"), self.admin_key)

    async def _read_body(self, scope: Scope, receive: Receive, limit: int) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return None
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send, limit: int) -> None:
        await _send_error(
            send, 413, f"request body is larger than {limit} bytes", "invalid_request_error", "request_too_large"
        )


async def _send_error(send: Send, status: int, message: str, type_: str, code: str) -> None:
    body = json.dumps(error_body(message, type_, None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
