"""HTTP routes of the chat path: parse, call ChatService, map the result. No logic here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from flywheel.errors import APIError, ErrorResponse
from flywheel.http import caller_id
from serving.chat import ChatService
from serving.completions import CompletionRequest, TextCompletion, text_chunk, text_completion
from serving.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelCard, ModelList

router = APIRouter()

_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}


def chat_service(request: Request) -> ChatService:
    service = getattr(request.app.state, "chat", None)
    if service is None:
        raise APIError(503, "the model is still loading", type_="service_unavailable", code="not_ready")
    return service


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_ERRORS)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    authorization: str | None = Header(default=None),
):
    service = chat_service(request)
    prepared = service.prepare(body, caller_id(request, authorization), stream=body.stream)
    if body.stream:
        return event_stream(service.stream(prepared))
    return await service.complete(prepared)


def served_model(request: Request) -> ModelCard:
    state = request.app.state
    return ModelCard(
        id=state.settings.served_model_name,
        created=state.started_at,
        root=state.settings.served_model_name,  # never the model's directory: no paths to callers
        policy_version=state.policy_router.stable.version,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[served_model(request)])


@router.get("/v1/models/{model}", response_model=ModelCard, responses=_ERRORS)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    card = served_model(request)
    if model != card.id:
        raise APIError(404, f"The model {model!r} does not exist", type_="invalid_request_error", param="model",
                       code="model_not_found")  # fmt: skip
    return card


@router.post("/v1/completions", response_model=TextCompletion, responses=_ERRORS)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    authorization: str | None = Header(default=None),
):
    """OpenAI's text completions: the prompt used as given, served and recorded as a chat (serving/completions.py)."""
    service = chat_service(request)
    prepared = service.prepare(body.as_chat(service.tokenizer), caller_id(request, authorization), stream=body.stream)
    if body.stream:
        offsets: dict[int, int] = {}
        return event_stream(service.stream(prepared, shape=lambda chunk: text_chunk(chunk, offsets)))
    return text_completion(await service.complete(prepared))
