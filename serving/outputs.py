"""What a response is made of as the engine produces it: each choice's text, tokens and logprobs,
and the Completion event that records it once it is over (serving/chat.py drives them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vllm import SamplingParams
from vllm.outputs import CompletionOutput

from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
from flywheel.v1 import events_pb2
from serving.policy import ServedPolicy
from serving.protocol import ChatCompletionRequest, ChoiceLogprobs, TokenLogprob, TopLogprob, Usage


@dataclass
class MergedOutputs:
    """Outputs of several engine requests merged as one (compare mode): what the consumers read."""

    outputs: list[CompletionOutput]


@dataclass
class ChoiceState:
    """What one choice has produced so far (streamed deltas are accumulated here)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    started: bool = False


@dataclass
class Prepared:
    completion_id: str
    user_id: str
    policy: ServedPolicy
    prompt_ids: list[int]
    sampling: SamplingParams
    request: ChatCompletionRequest
    model_name: str
    created: int
    started_at: float
    choices: dict[int, ChoiceState]
    choice_policies: list[ServedPolicy] = field(default_factory=list)  # compare mode: one version per choice
    # The prompt the model read, decoded with its special tokens, where the messages alone do not
    # give it (ChatCompletionRequest.templated_from_messages): the event's prompt_text.
    prompt_text: str | None = None
    first_token_at: float | None = None

    def policy_of(self, index: int) -> ServedPolicy:
        return self.choice_policies[index] if self.choice_policies else self.policy


def choice_logprobs(output: CompletionOutput, top: int, tokenizer) -> ChoiceLogprobs:
    """vLLM's logprobs of one output as OpenAI's, -inf clipped to -9999 (JSON has no infinity)."""
    content = []
    for token_id, candidates in zip(output.token_ids, output.logprobs or [], strict=False):
        chosen = candidates[token_id]
        ranked = sorted(candidates.items(), key=lambda item: item[1].rank or 0)[:top]
        content.append(
            TokenLogprob(
                token=_token_text(tokenizer, token_id, chosen.decoded_token),
                logprob=max(chosen.logprob, -9999.0),
                bytes=list(_token_text(tokenizer, token_id, chosen.decoded_token).encode("utf-8")),
                top_logprobs=[
                    TopLogprob(
                        token=_token_text(tokenizer, tid, lp.decoded_token),
                        logprob=max(lp.logprob, -9999.0),
                        bytes=list(_token_text(tokenizer, tid, lp.decoded_token).encode("utf-8")),
                    )
                    for tid, lp in ranked
                ],
            )
        )
    return ChoiceLogprobs(content=content)

def _token_text(tokenizer, token_id: int, decoded: str | None) -> str:
    return decoded if decoded is not None else tokenizer.decode([token_id])


def completion_event(prep: Prepared, usage: Usage) -> events_pb2.Completion:
    """The one Completion event of a finished (or aborted) response, each choice with its version."""
    request = prep.request
    sampling = events_pb2.SamplingParameters(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=prep.sampling.max_tokens or 0,
        stop=request.stop_list(),
        n=request.n,
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs or 0,
    )
    if request.seed is not None:
        sampling.seed = request.seed
    return events_pb2.Completion(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        completion_id=prep.completion_id,
        user_id=prep.user_id,
        policy_version=prep.policy.version,
        model=prep.model_name,
        messages=[events_pb2.ChatMessage(role=m.role, content=m.text()) for m in request.messages]
        if request.prompt_text is None else [],
        prompt_text=prep.prompt_text or "",
        choices=[
            events_pb2.CompletionChoice(
                index=s.index,
                text=s.text,
                finish_reason=s.finish_reason or "",
                token_ids=s.token_ids,
                token_logprobs=s.token_logprobs,
                policy_version=prep.policy_of(s.index).version,
            )
            for s in prep.choices.values()
        ],
        sampling=sampling,
        prompt_token_ids=prep.prompt_ids,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        stream=request.stream,
        latency_seconds=time.perf_counter() - prep.started_at,
        pinned=request.policy_version is not None,
    )
