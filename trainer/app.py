"""The trainer process: factory and lifespan (service threads, gRPC), /metrics and /status."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from flywheel.metrics import render
from flywheel.settings import TrainerSettings
from trainer.grpc_server import TrainerServicer, start_grpc_server
from trainer.metrics import TrainerMetrics
from trainer.service import TrainerService

log = logging.getLogger(__name__)


def build_app(settings: TrainerSettings, base_model: str) -> FastAPI:
    metrics = TrainerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("trainer configuration: %s", settings.model_dump_json(exclude={"feedback_token_secret", "api_keys"}))
        service = TrainerService(settings, base_model, metrics)
        service.start()
        grpc_server = await start_grpc_server(TrainerServicer(service), settings.host, settings.grpc_port)
        app.state.service = service
        try:
            yield
        finally:
            await grpc_server.stop(grace=2)
            await asyncio.to_thread(service.stop)

    app = FastAPI(title="Flywheel trainer", version="1", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = getattr(request.app.state, "service", None) is not None
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/status")
    async def status(request: Request) -> JSONResponse:
        current = await asyncio.to_thread(request.app.state.service.status)
        return JSONResponse(dataclasses.asdict(current))

    @app.get("/metrics")
    async def metrics_route() -> Response:
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    return app
