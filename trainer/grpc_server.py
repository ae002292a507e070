"""TrainerService over gRPC: a thin shell around trainer.service.TrainerService."""

from __future__ import annotations

import asyncio
import logging

import grpc
from pydantic import SecretStr

from flywheel.grpc_server import require_admin
from flywheel.grpc_server import start_grpc_server as start_server
from flywheel.v1 import trainer_pb2, trainer_pb2_grpc
from trainer.context import RoundResult
from trainer.service import TrainerService, TrainerStatus

log = logging.getLogger(__name__)

SERVICE_NAME = "flywheel.v1.TrainerService"


def status_message(status: TrainerStatus) -> trainer_pb2.TrainerStatusResponse:
    response = trainer_pb2.TrainerStatusResponse(
        paused=status.paused,
        round_running=status.round_running,
        events_ingested=status.events_ingested,
        pairs_available=status.pairs_available,
        new_feedback_since_round=status.new_feedback_since_round,
        published_version=status.published_version,
    )
    for record in status.recent_rounds:
        summary = response.recent_rounds.add(
            round=record.round,
            outcome=record.outcome,
            reason=record.reason,
            version=record.version,
            started_at=record.started_at,
            duration_seconds=(record.finished_at or record.started_at) - record.started_at,
        )
        for key, value in record.metrics.items():
            if isinstance(value, int | float):
                summary.metrics[key] = float(value)
    return response


def result_message(result: RoundResult) -> trainer_pb2.RoundSummary:
    summary = trainer_pb2.RoundSummary(
        round=result.round, outcome=result.outcome, reason=result.reason, version=result.version,
        duration_seconds=result.metrics.get("seconds_round", 0.0),
    )  # fmt: skip
    for key, value in result.metrics.items():
        if isinstance(value, int | float):
            summary.metrics[key] = float(value)
    return summary


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """GetStatus is open (as HTTP /status is); every call that changes what the trainer does needs the admin key."""

    def __init__(self, service: TrainerService, admin_key: SecretStr) -> None:
        self.service = service
        self.admin_key = admin_key

    async def GetStatus(self, request, context):
        status = await asyncio.to_thread(self.service.status)
        return status_message(status)

    async def TriggerRound(self, request, context):
        await require_admin(context, self.admin_key)
        if not request.wait:
            accepted, message = self.service.trigger(request.reward_only)
            return trainer_pb2.TriggerRoundResponse(accepted=accepted, message=message)
        # Queued behind a running round, never refused; the round runs on even if the caller goes away.
        result = await asyncio.wrap_future(self.service.request_round(request.reward_only))
        return trainer_pb2.TriggerRoundResponse(
            accepted=True, message=f"round {result.round}: {result.outcome}", result=result_message(result)
        )

    async def Pause(self, request, context):
        await require_admin(context, self.admin_key)
        return trainer_pb2.PauseResponse(paused=self.service.pause())

    async def Resume(self, request, context):
        await require_admin(context, self.admin_key)
        return trainer_pb2.PauseResponse(paused=self.service.resume())


async def start_grpc_server(servicer: TrainerServicer, host: str, port: int) -> grpc.aio.Server:
    return await start_server(
        lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server), SERVICE_NAME, host, port
    )
