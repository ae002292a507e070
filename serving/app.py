"""The serving app: factory and lifespan (engine, publisher, router, chat service)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from flywheel.errors import register_error_handlers
from flywheel.http import RequestGuard
from flywheel.models import resolve_model
from flywheel.publisher import BufferedPublisher
from flywheel.settings import TOPIC_COMPLETIONS, ServingSettings
from flywheel.tokens import FeedbackToken
from serving.api import chat as chat_api
from serving.api import health as health_api
from serving.api import pages as pages_api
from serving.api import policy as policy_api
from serving.chat import ChatService
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.rollout import PolicyReceiver, receiver_store

log = logging.getLogger(__name__)


def completion_publisher(settings: ServingSettings, metrics: ServingMetrics) -> BufferedPublisher:
    return BufferedPublisher(
        settings.kafka_bootstrap,
        TOPIC_COMPLETIONS,
        capacity=settings.event_buffer_size,
        on_published=metrics.events_published.inc,
        on_dropped=metrics.events_dropped.inc,
        on_error=metrics.publish_errors.inc,
        on_depth=metrics.event_buffer.set,
        on_dead_lettered=metrics.events_dead_lettered.labels("serving").inc,
    )


def build_app(
    settings: ServingSettings,
    engine_factory: Callable[[ServingSettings, str], object] | None = None,
    publisher: BufferedPublisher | None = None,
) -> FastAPI:
    """Build the serving app. The engine starts in the lifespan (tests may inject a factory)."""
    metrics = ServingMetrics()
    api_keys = settings.api_key_map()
    tokens = FeedbackToken(settings.feedback_token_secret.get_secret_value())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from serving.engine import build_engine

        log.info("serving configuration: %s", settings.describe())
        model_path = await asyncio.to_thread(resolve_model, settings.model, settings.models_dir)
        engine = (engine_factory or build_engine)(settings, model_path)
        events = publisher or completion_publisher(settings, metrics)
        events.start()
        router = PolicyRouter(stable=ServedPolicy(settings.policy_version))
        metrics.policy_info.labels(settings.policy_version, "stable").set(1)
        receiver = PolicyReceiver(engine, router, receiver_store(settings), settings, metrics, model_path)
        await receiver.start(follow=settings.follow_policies)
        grpc_server = None
        if settings.grpc_port:
            from serving.grpc_server import start_policy_server

            grpc_server = await start_policy_server(receiver, settings.host, settings.grpc_port, settings.admin_key)
        app.state.receiver = receiver
        app.state.engine = engine
        app.state.model_path = model_path
        app.state.policy_router = router
        app.state.chat = ChatService(
            engine=engine,
            tokenizer=engine.get_tokenizer(),
            settings=settings,
            router=router,
            tokens=tokens,
            publisher=events,
            metrics=metrics,
        )
        log.info("serving %s as policy version %s", model_path, settings.policy_version)
        try:
            yield
        finally:
            app.state.chat = None
            app.state.receiver = None
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            await receiver.stop()
            await asyncio.to_thread(events.close)
            engine.shutdown()

    app = FastAPI(title="Flywheel serving", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    app.state.started_at = int(time.time())
    app.state.engine = None
    app.state.chat = None
    app.state.receiver = None
    app.include_router(chat_api.router)
    app.include_router(health_api.router)
    app.include_router(pages_api.router)
    app.include_router(policy_api.router)
    register_error_handlers(app)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        requests=metrics.requests,
        latency=metrics.latency,
        in_flight=metrics.in_flight,
    )
    return app
