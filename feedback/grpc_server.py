"""FeedbackService over gRPC: a thin shell around the same FeedbackService as REST.

Unary calls fail with a gRPC status code; the client-streaming BulkSubmit answers one result
per event, in order. gRPC health checking reports SERVING once the outbox is open.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from pydantic import ValidationError

from feedback.protocol import ComparisonCreate, CorrectionCreate, FeedbackCreate
from feedback.service import FeedbackRejected, FeedbackService, Prepared
from flywheel.auth import Unauthorized, resolve_user
from flywheel.grpc_server import peer_host
from flywheel.grpc_server import start_grpc_server as start_server
from flywheel.v1 import feedback_pb2, feedback_pb2_grpc

log = logging.getLogger(__name__)

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_WINDOW = 1_000
SERVICE_NAME = "flywheel.v1.FeedbackService"


def thumbs_model(request: feedback_pb2.SubmitThumbsRequest) -> FeedbackCreate:
    return FeedbackCreate(
        completion_id=request.completion_id,
        choice_index=request.choice_index,
        rating=request.rating,
        feedback_token=request.feedback_token,
        comment=request.comment or None,
        dimensions=dict(request.dimensions) or None,
        flags=list(request.flags) or None,
        idempotency_key=request.idempotency_key or None,
    )


def comparison_model(request: feedback_pb2.SubmitComparisonRequest) -> ComparisonCreate:
    return ComparisonCreate(
        completion_id=request.completion_id,
        feedback_tokens=list(request.feedback_tokens),
        preferred_choice_index=request.preferred_choice_index if request.HasField("preferred_choice_index") else None,
        rejected_choice_index=request.rejected_choice_index if request.HasField("rejected_choice_index") else None,
        ranking=list(request.ranking) or None,
        strength=request.strength or None,
        idempotency_key=request.idempotency_key or None,
    )


def correction_model(request: feedback_pb2.SubmitCorrectionRequest) -> CorrectionCreate:
    return CorrectionCreate(
        completion_id=request.completion_id,
        choice_index=request.choice_index,
        feedback_token=request.feedback_token,
        text=request.text,
        comment=request.comment or None,
        idempotency_key=request.idempotency_key or None,
    )


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(
        self, service: FeedbackService, api_keys: dict[str, str], allow_anonymous: bool, max_bulk_events: int = 100_000
    ) -> None:
        self.max_bulk_events = max_bulk_events
        self.service = service
        self.api_keys = api_keys
        self.allow_anonymous = allow_anonymous

    def _user(self, context: grpc.aio.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata() or ())
        host = peer_host(context.peer() or "")
        try:
            return resolve_user(metadata.get("authorization"), self.api_keys, self.allow_anonymous, host)
        except Unauthorized as exc:
            raise FeedbackRejected(401, "unauthenticated", str(exc)) from None

    def _prepare(self, kind: str, request, user: str) -> Prepared:
        try:
            if kind == "thumbs":
                return self.service.prepare_thumbs(thumbs_model(request), user)
            if kind == "correction":
                return self.service.prepare_correction(correction_model(request), user)
            return self.service.prepare_comparison(comparison_model(request), user)
        except ValidationError as exc:
            raise FeedbackRejected(400, "invalid", _validation_message(exc)) from None

    async def _unary(self, kind: str, request, context: grpc.aio.ServicerContext) -> feedback_pb2.FeedbackResult:
        try:
            prepared = self._prepare(kind, request, self._user(context))
            appended = await self.service.submit(prepared, "grpc")
        except FeedbackRejected as exc:
            self.service.reject(kind, exc.reason)
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message)
        return feedback_pb2.FeedbackResult(status=feedback_pb2.FEEDBACK_STATUS_ACCEPTED, event_id=appended.event_id)

    async def SubmitThumbs(self, request, context):
        return await self._unary("thumbs", request, context)

    async def SubmitComparison(self, request, context):
        return await self._unary("comparison", request, context)

    async def SubmitCorrection(self, request, context):
        return await self._unary("correction", request, context)

    async def BulkSubmit(self, request_iterator, context):
        try:
            user = self._user(context)
        except FeedbackRejected as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        response = feedback_pb2.BulkSubmitResponse()
        window: list[tuple[int, Prepared]] = []  # (position in the response, event)
        in_flight: list[asyncio.Task] = []  # windows being committed while the stream is read on
        async for item in request_iterator:
            kind = item.WhichOneof("item") or "missing"
            try:
                if kind == "missing":
                    raise FeedbackRejected(
                        400, "invalid", "each BulkSubmitRequest needs thumbs, comparison or correction"
                    )
                window.append((len(response.results), self._prepare(kind, getattr(item, kind), user)))
                response.results.add(status=feedback_pb2.FEEDBACK_STATUS_ACCEPTED)
            except FeedbackRejected as exc:
                self.service.reject(kind, exc.reason)
                response.results.append(self._rejected(exc))
            if len(response.results) >= self.max_bulk_events:
                break  # the rest of the stream is not read: the response says how far it got
            if len(window) >= _WINDOW:  # one group commit per window bounds memory and fsyncs
                in_flight.append(asyncio.ensure_future(self._commit_window(window, response)))
                window = []
                if len(in_flight) > 2:
                    await in_flight.pop(0)
        in_flight.append(asyncio.ensure_future(self._commit_window(window, response)))
        await asyncio.gather(*in_flight)
        response.accepted = sum(r.status == feedback_pb2.FEEDBACK_STATUS_ACCEPTED for r in response.results)
        response.rejected = len(response.results) - response.accepted
        return response

    async def _commit_window(self, window: list[tuple[int, Prepared]], response) -> None:
        if not window:
            return
        try:
            appended = await self.service.submit_many([prepared for _, prepared in window], "grpc")
        except FeedbackRejected as exc:
            for position, _ in window:
                response.results[position].CopyFrom(self._rejected(exc))
            return
        for (position, _), result in zip(window, appended, strict=True):
            response.results[position].event_id = result.event_id

    @staticmethod
    def _rejected(exc: FeedbackRejected) -> feedback_pb2.FeedbackResult:
        code = _CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
        return feedback_pb2.FeedbackResult(
            status=feedback_pb2.FEEDBACK_STATUS_REJECTED, error=exc.message, code=code.name
        )


async def start_grpc_server(servicer: FeedbackServicer, host: str, port: int) -> grpc.aio.Server:
    return await start_server(
        lambda server: feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(servicer, server),
        SERVICE_NAME, host, port, options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )  # fmt: skip
