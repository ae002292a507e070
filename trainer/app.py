"""The trainer process: factory and lifespan (service threads, gRPC), /metrics, /status and /history."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from flywheel.errors import APIError, register_error_handlers
from flywheel.metrics import render
from flywheel.settings import TrainerSettings
from trainer.grpc_server import TrainerServicer, start_grpc_server
from trainer.metrics import TrainerMetrics
from trainer.service import TrainerService

log = logging.getLogger(__name__)


def finite(value):
    """`value` with NaN and infinities as None, so JSON carries it (a round without held-out pairs has NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def build_app(settings: TrainerSettings, base_model: str) -> FastAPI:
    metrics = TrainerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("trainer configuration: %s", settings.describe())
        service = TrainerService(settings, base_model, metrics, grpc_address=f"{settings.host}:{settings.grpc_port}")
        service.start()
        servicer = TrainerServicer(service, settings.admin_key)
        grpc_server = await start_grpc_server(servicer, settings.host, settings.grpc_port)
        app.state.service = service
        try:
            yield
        finally:
            await grpc_server.stop(grace=2)
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="Flywheel trainer", version="1", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        service = getattr(request.app.state, "service", None)
        problem = service.health() if service is not None else ""
        if problem:
            return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = getattr(request.app.state, "service", None) is not None
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/status")
    async def status(request: Request) -> JSONResponse:
        current = await asyncio.to_thread(request.app.state.service.status)
        return JSONResponse(finite(dataclasses.asdict(current)))

    @app.get("/history")
    async def history(
        request: Request,
        bucket_s: int = Query(60, ge=1, le=86_400, description="Width of a time bucket, seconds."),
        since: float = Query(0.0, ge=0.0, description="Only feedback given at or after this Unix time."),
        rounds: int = Query(200, ge=1, le=1000, description="Most recent rounds to list."),
    ) -> JSONResponse:
        """Thumbs and comparisons per version and time bucket, and the rounds: what the operator page charts."""
        service = getattr(request.app.state, "service", None)
        if service is None:
            raise APIError(503, "the trainer is starting", type_="service_unavailable", code="starting")
        feedback = await asyncio.to_thread(service.dataset.feedback_history, bucket_s, since)
        recent = await asyncio.to_thread(service.dataset.rounds, rounds)
        verdict = service.controller.last_verdict
        body = {
            "bucket_s": bucket_s,
            "since": since,
            **feedback,
            "rounds": [dataclasses.asdict(record) for record in reversed(recent)],
            "rollout_verdict": verdict.reason if verdict else "",
        }
        return JSONResponse(finite(body))

    @app.get("/metrics")
    async def metrics_route() -> Response:
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    register_error_handlers(app)
    # The operator page (served by serving, another origin) reads /status and /history from the browser.
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list(), allow_methods=["GET"], max_age=600)
    return app
