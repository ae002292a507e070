"""ChatService without an engine: a fake AsyncLLM (built on the real class) answers one delta."""

from __future__ import annotations

import asyncio
import json
from unittest.mock import Mock

import pytest
from transformers import PreTrainedTokenizerBase
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM

from flywheel.errors import APIError
from flywheel.publisher import BufferedPublisher
from flywheel.settings import ServingSettings
from flywheel.tokens import FeedbackToken
from flywheel.v1 import events_pb2
from serving.chat import ChatService
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.protocol import ChatCompletionRequest


def chat_service(publisher: BufferedPublisher, **limits) -> ChatService:
    tokenizer = Mock(spec=PreTrainedTokenizerBase)
    tokenizer.apply_chat_template.return_value = "<user>hi<assistant>"
    tokenizer.encode.return_value = [1, 2, 3]
    engine = Mock(spec=AsyncLLM)

    async def generate(prompt, sampling, request_id, lora_request=None):
        piece = CompletionOutput(index=0, text="hello", token_ids=[7], cumulative_logprob=None, logprobs=None,
                                 finish_reason="stop")  # fmt: skip
        yield RequestOutput(request_id, None, [1, 2, 3], None, [piece], finished=True)

    engine.generate = generate
    settings = ServingSettings(served_model_name="flywheel-test", **limits)
    router = PolicyRouter(stable=ServedPolicy("base"))
    return ChatService(engine, tokenizer, settings, router, FeedbackToken("s"), publisher, ServingMetrics())


def test_chunks_and_the_completion_event_name_the_served_model_not_the_requests():
    publisher = Mock(spec=BufferedPublisher)
    service = chat_service(publisher)
    request = ChatCompletionRequest(model="m" * 256, messages=[{"role": "user", "content": "hi"}], stream=True)

    async def run() -> list[str]:
        return [chunk async for chunk in service.stream(service.prepare(request, "alice", stream=True))]

    chunks = asyncio.run(run())
    bodies = [json.loads(c.removeprefix("data: ")) for c in chunks if c != "data: [DONE]\n\n"]
    assert bodies and {body["model"] for body in bodies} == {"flywheel-test"}
    (_, payload), _ = publisher.publish.call_args
    assert events_pb2.Completion.FromString(payload).model == "flywheel-test"


def test_one_user_is_held_to_a_request_and_a_token_budget_others_are_not():
    service = chat_service(Mock(spec=BufferedPublisher), chat_rate_limit_burst=3, chat_rate_limit_per_s=0.01,
                           chat_tokens_burst=100, chat_tokens_per_s=0.01)  # fmt: skip
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    for _ in range(3):
        service.prepare(request, "alice", stream=False)
    with pytest.raises(APIError) as limited:
        service.prepare(request, "alice", stream=False)
    assert limited.value.status_code == 429 and "chat requests" in limited.value.message
    assert int(limited.value.headers["Retry-After"]) >= 1
    service.prepare(request, "bob", stream=False)  # another user's budget is their own
    greedy = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=60, n=2)
    service.prepare(greedy, "carol", stream=False)  # 120 tokens asked for: a full bucket (100) takes it, emptied
    with pytest.raises(APIError) as tokens:
        service.prepare(greedy, "carol", stream=False)
    assert tokens.value.status_code == 429 and "tokens" in tokens.value.message


def test_a_full_engine_queue_is_a_503_with_retry_after():
    service = chat_service(Mock(spec=BufferedPublisher), max_queued_requests=2)
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    stable = service.router.stable
    with service.router.using(stable), service.router.using(stable), pytest.raises(APIError) as full:
        service.prepare(request, "alice", stream=False)
    assert full.value.status_code == 503 and full.value.headers == {"Retry-After": "1"}
    service.prepare(request, "alice", stream=False)  # room again
