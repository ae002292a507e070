"""Liveness, readiness and metrics routes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from flywheel.metrics import render

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is not None and engine.errored:
        return JSONResponse({"status": "engine dead"}, status_code=503)
    receiver = getattr(request.app.state, "receiver", None)
    problem = receiver.log.health() if receiver is not None and receiver.log is not None else ""
    if problem:
        return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or getattr(request.app.state, "chat", None) is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    if engine.errored:
        return JSONResponse({"status": "engine dead"}, status_code=503)
    return JSONResponse({"status": "ready", "policy_version": request.app.state.policy_router.stable.version})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = render(request.app.state.metrics.registry, include_global=True)
    return Response(body, media_type=content_type)
