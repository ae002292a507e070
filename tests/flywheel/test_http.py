"""RequestGuard as plain ASGI: admin paths are refused before their body is read."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import SecretStr

from flywheel.http import RequestGuard


def guard(app) -> RequestGuard:
    registry = CollectorRegistry()
    return RequestGuard(
        app, max_body_bytes=1_000,
        requests=Counter("requests", "", ["route", "method", "status"], registry=registry),
        latency=Histogram("latency", "", ["route"], registry=registry),
        in_flight=Gauge("in_flight", "", registry=registry),
        path_limits={"/import": 50_000_000}, admin_paths=frozenset({"/import"}), admin_key=SecretStr("admin"),
    )  # fmt: skip


async def call(authorization: bytes | None) -> tuple[int, dict, list[str]]:
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append("app")
        await receive()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        seen.append("body read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", b"60000000")] + ([(b"authorization", authorization)] if authorization else [])
    await guard(app)({"type": "http", "method": "POST", "path": "/import", "headers": headers}, receive, send)
    body = json.loads(sent[1]["body"]) if sent[1]["body"] != b"{}" else {}
    return sent[0]["status"], body, seen


async def test_an_admin_path_without_the_key_is_a_401_before_the_body_is_read():
    for authorization in (None, b"Bearer wrong", b"Bearer admin\xff"):
        status, body, seen = await call(authorization)
        assert status == 401 and body["error"]["code"] == "invalid_admin_key"
        assert seen == []  # neither the body nor the app was touched (a 413 would have meant it was weighed)


async def test_an_admin_path_with_the_key_goes_on_to_the_size_check():
    status, body, _ = await call(b"Bearer admin")
    assert status == 413 and body["error"]["code"] == "request_too_large"  # 60 MB declared, 50 MB allowed
