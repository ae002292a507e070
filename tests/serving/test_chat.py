"""ChatService without an engine: a fake AsyncLLM (built on the real class) answers one delta."""

from __future__ import annotations

import asyncio
import json
from unittest.mock import Mock

from transformers import PreTrainedTokenizerBase
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM

from flywheel.publisher import BufferedPublisher
from flywheel.settings import ServingSettings
from flywheel.tokens import FeedbackToken
from flywheel.v1 import events_pb2
from serving.chat import ChatService
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.protocol import ChatCompletionRequest


def chat_service(publisher: BufferedPublisher) -> ChatService:
    tokenizer = Mock(spec=PreTrainedTokenizerBase)
    tokenizer.apply_chat_template.return_value = "<user>hi<assistant>"
    tokenizer.encode.return_value = [1, 2, 3]
    engine = Mock(spec=AsyncLLM)

    async def generate(prompt, sampling, request_id, lora_request=None):
        piece = CompletionOutput(index=0, text="hello", token_ids=[7], cumulative_logprob=None, logprobs=None,
                                 finish_reason="stop")  # fmt: skip
        yield RequestOutput(request_id, None, [1, 2, 3], None, [piece], finished=True)

    engine.generate = generate
    settings = ServingSettings(served_model_name="flywheel-test")
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
