"""The feedback app: factory and lifespan (outbox, relay, gRPC server on the same loop)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from feedback.api import routes
from feedback.grpc_server import FeedbackServicer, start_grpc_server
from feedback.metrics import FeedbackMetrics
from feedback.outbox import Outbox
from feedback.relay import RelayProcess
from feedback.service import FeedbackRejected, FeedbackService
from flywheel.errors import error_body, register_error_handlers, validation_error_response
from flywheel.http import RequestGuard
from flywheel.limits import RateLimiter
from flywheel.metrics import render
from flywheel.settings import FeedbackSettings
from flywheel.tokens import FeedbackToken

log = logging.getLogger(__name__)

RELAY_DOWN_UNHEALTHY_S = 30.0  # /healthz fails once the relay stayed dead this long (restarts keep failing)
_KINDS = {
    "/v1/feedback": "thumbs",
    "/v1/comparisons": "comparison",
    "/v1/corrections": "correction",
    "/v1/preferences/import": "import",
}


def build_app(settings: FeedbackSettings, start_grpc: bool = True) -> FastAPI:
    metrics = FeedbackMetrics()
    api_keys = settings.api_key_map()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        retention_s = settings.outbox_retention_hours * 3600
        log.info("feedback configuration: %s", settings.describe())
        relay = RelayProcess(
            settings.outbox_path, settings.kafka_bootstrap, settings.relay_batch, retention_s,
            manage_topics=settings.create_topics,
        )  # fmt: skip
        metrics.watch_relay(relay.stats)
        outbox = Outbox(
            settings.outbox_path,
            settings.outbox_max_pending,
            wake=relay.wake,
            observe_commit=metrics.outbox_commit_latency.observe,
        )
        relay.start()
        service = FeedbackService(
            FeedbackToken(settings.feedback_token_secret.get_secret_value(), ttl_s=settings.feedback_token_ttl_s),
            outbox,
            metrics,
            settings,
            RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        )
        grpc_server = None
        if start_grpc:
            servicer = FeedbackServicer(service, api_keys, settings.allow_anonymous, settings.max_bulk_events)
            grpc_server = await start_grpc_server(servicer, settings.host, settings.grpc_port)
        app.state.feedback = service
        app.state.outbox = outbox
        app.state.relay = relay

        async def watch_relay() -> None:
            while True:
                await asyncio.sleep(1.0)
                if relay.ensure_running():
                    metrics.relay_restarts.inc()

        watcher = asyncio.get_running_loop().create_task(watch_relay())
        # Objects that live as long as the process need no garbage collection: keep them out of
        # the collector's full passes, which otherwise pause every request now and then.
        gc.freeze()
        log.info("feedback ready: %d events pending from before", outbox.pending)
        try:
            yield
        finally:
            watcher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            relay.stop(settings.shutdown_drain_s, pending=lambda: outbox.pending)
            outbox.close()

    app = FastAPI(title="Flywheel feedback", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    app.include_router(routes.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        relay = getattr(request.app.state, "relay", None)
        if relay is not None and relay.down_for() > RELAY_DOWN_UNHEALTHY_S:
            message = f"the relay has been down for {relay.down_for():.0f} s; accepted events are not reaching Kafka"
            return JSONResponse({"status": "unhealthy", "reason": message}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        outbox = getattr(request.app.state, "outbox", None)
        if outbox is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "outbox_pending": outbox.pending})

    @app.get("/metrics")
    async def metrics_route(request: Request) -> Response:
        metrics.outbox_depth.set(request.app.state.outbox.pending)
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    register_error_handlers(app)

    @app.exception_handler(FeedbackRejected)
    async def _rejected(request: Request, exc: FeedbackRejected) -> JSONResponse:
        metrics.rejected.labels(_KINDS.get(request.url.path, "other"), exc.reason).inc()
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        code = exc.reason
        return JSONResponse(
            error_body(exc.message, "invalid_request_error", exc.param, code), status_code=exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels(_KINDS.get(request.url.path, "other"), "invalid").inc()
        return validation_error_response(exc)

    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        path_limits={"/v1/preferences/import": settings.max_import_body_bytes},
        admin_paths=frozenset({"/v1/preferences/import"}),  # refused before its 50 MB body is read
        admin_key=settings.admin_key,
        requests=metrics.requests,
        latency=metrics.latency,
        in_flight=metrics.in_flight,
    )
    # Outermost, so that errors (413 included) carry the CORS headers the chat page needs to read them.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin_list(),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    return app
