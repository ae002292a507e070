"""`POST /v1/completions`: OpenAI's text completions, served by the chat path.

A completion request becomes a chat request that carries its prompt as text (or token ids) to be
used as it is, with no chat template: ChatService routes, limits, samples, signs feedback tokens
and records it as it does a chat (the Completion event has `prompt_text` and no messages, and the
trainer learns from it with the prompt as written: trainer/records.py). Only the shape of the
answer differs: `text_completion` objects, logprobs as `tokens` / `token_logprobs` /
`top_logprobs` / `text_offset`.

Refused with a 400 naming the field: several prompts in one request, `echo`, `suffix`,
`best_of` other than `n`, `logprobs` above 5 (OpenAI's bound).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flywheel.errors import APIError
from serving.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    StreamOptions,
    Usage,
)

MAX_PROMPT_CHARS = 200_000  # the context length refuses long prompts too; this bounds what is read first


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(max_length=256)] | None = None
    prompt: (
        Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]], Field(min_length=1, max_length=1)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=32_768)]
    ) = Field(description="One prompt: a string, a list of one string, or token ids (one prompt per request).")
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    best_of: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    store: bool | None = None
    policy_version: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        None, description="Flywheel: pin a policy version (evaluation)."
    )

    def as_chat(self, tokenizer) -> ChatCompletionRequest:
        """The chat request ChatService serves: the same sampling, the prompt used as it is."""
        if self.echo:
            raise APIError(400, "echo cannot be honoured: this server does not return the prompt", param="echo",
                           code="unsupported_parameter")  # fmt: skip
        if self.suffix:
            raise APIError(400, "suffix cannot be honoured: this server does not insert text", param="suffix",
                           code="unsupported_parameter")  # fmt: skip
        if self.best_of is not None and self.best_of != self.n:
            raise APIError(400, "best_of cannot be honoured: every sampled answer is returned (best_of = n)",
                           param="best_of", code="unsupported_parameter")  # fmt: skip
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], int):
            ids = list(self.prompt)
            if max(ids) >= len(tokenizer):
                raise APIError(400, f"prompt has token ids outside the vocabulary (size {len(tokenizer)})",
                               param="prompt")  # fmt: skip
            text = tokenizer.decode(ids)
        else:
            text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
            if not text.strip():
                raise APIError(400, "prompt must not be empty", param="prompt")
            ids = list(tokenizer.encode(text))  # with the special tokens a bare text starts with, as vLLM does
        try:
            chat = self._chat(text)
        except ValidationError as exc:  # a field the chat request bounds (stop, logit_bias): named, a 400
            error = exc.errors()[0]
            param = ".".join(str(part) for part in error["loc"]) or None
            raise APIError(400, f"{param}: {error['msg']}", param=param) from None
        chat.set_text_prompt(text, ids)
        return chat

    def _chat(self, text: str) -> ChatCompletionRequest:
        return ChatCompletionRequest(
            model=self.model, messages=[ChatMessage(role="user", content=text)], n=self.n,
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, stop=self.stop,
            seed=self.seed, logprobs=self.logprobs is not None, top_logprobs=self.logprobs,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=self.logit_bias, stream=self.stream, stream_options=self.stream_options, user=self.user,
            store=self.store, policy_version=self.policy_version,
        )  # fmt: skip


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: TextLogprobs | None = None
    feedback_token: str | None = None
    policy_version: str | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    policy_version: str
    system_fingerprint: str | None = None


def text_logprobs(logprobs: ChoiceLogprobs | None, offset: int = 0) -> TextLogprobs | None:
    if logprobs is None or logprobs.content is None:
        return None
    offsets, at = [], offset
    for entry in logprobs.content:
        offsets.append(at)
        at += len(entry.token)
    return TextLogprobs(
        tokens=[e.token for e in logprobs.content],
        token_logprobs=[e.logprob for e in logprobs.content],
        # the sampled token is always among them, as OpenAI's: up to `logprobs` + 1 entries
        top_logprobs=[{e.token: e.logprob} | {t.token: t.logprob for t in e.top_logprobs} for e in logprobs.content],
        text_offset=offsets,
    )


def text_completion(response: ChatCompletionResponse) -> TextCompletion:
    return TextCompletion(
        id=response.id.replace("chatcmpl-", "cmpl-", 1), created=response.created, model=response.model,
        choices=[TextChoice(index=c.index, text=c.message.content or "", finish_reason=c.finish_reason,
                            logprobs=text_logprobs(c.logprobs), feedback_token=c.feedback_token,
                            policy_version=c.policy_version) for c in response.choices],
        usage=response.usage, policy_version=response.policy_version,
    )  # fmt: skip


def text_chunk(chunk: ChatCompletionChunk, offsets: dict[int, int]) -> TextCompletion:
    """A streamed chat chunk as a completion chunk; `offsets` carries each choice's text length so far."""
    choices = []
    for c in chunk.choices:
        text = c.delta.content or ""
        choices.append(TextChoice(index=c.index, text=text, finish_reason=c.finish_reason,
                                  logprobs=text_logprobs(c.logprobs, offsets.get(c.index, 0)),
                                  feedback_token=c.feedback_token, policy_version=c.policy_version))  # fmt: skip
        offsets[c.index] = offsets.get(c.index, 0) + len(text)
    return TextCompletion(id=chunk.id.replace("chatcmpl-", "cmpl-", 1), created=chunk.created, model=chunk.model,
                          choices=choices, usage=chunk.usage, policy_version=chunk.policy_version)  # fmt: skip
