"""OpenAI chat-completions request and response models, plus Flywheel's extra fields.

Responses carry `policy_version` at the top level and a `feedback_token` in every choice.
Limits that depend on configuration (n, max_tokens, context) are checked by ChatService.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

# vLLM's own models of these fields
from vllm.entrypoints.generate.base.protocol import DeltaToolCall, ResponseFormat, ToolCall
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam

Role = Literal["system", "developer", "user", "assistant", "tool"]
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 300  # OpenAI's own bound on the entries of logit_bias

# OpenAI fields that ask for something this server cannot do: a request that sets one is refused
# with a 400 naming it, never answered as if it had not asked (ChatService.refuse_unhonoured).
# Fields OpenAI does not know stay ignored, as OpenAI's own API ignores them.
UNHONOURED = {
    "functions": "function calls (deprecated in favour of tools)",
    "function_call": "function calls (deprecated in favour of tools)",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort (the served model does not reason)",
}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Role
    # Before content: its check reads them.
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant's calls (then content may be null).")
    tool_call_id: str | None = Field(None, description="A tool message answers this call.")
    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = Field(None, validate_default=True)
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content_or_calls(cls, value, info: ValidationInfo):
        if value is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("content is required (it may be null only in an assistant message with tool_calls)")
        return value

    @model_validator(mode="after")
    def _tool_answer_names_its_call(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it: a call's arguments as an object where they parse."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)}}
                for call in self.tool_calls
            ]  # fmt: skip
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="Accepted for OpenAI compatibility; responses name the served model, never echo this."
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    n: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | list[str] | None = Field(
        None, description=f"At most {MAX_STOP_STRINGS} strings of 1..{MAX_STOP_CHARS} characters."
    )
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description=f"Token id (as a string) to a bias in -100..100 added to its logit; at most {MAX_LOGIT_BIAS}."
    )
    response_format: ResponseFormat | None = Field(
        None, description="text, json_object or json_schema: the answer is constrained to it (vLLM structured outputs)."
    )
    modalities: list[Literal["text"]] | None = Field(None, description="Only text is served.")
    tools: Annotated[list[ChatCompletionToolsParam], Field(max_length=128)] | None = Field(
        None, description="Functions the model may call (its chat template must support tools: serving/tools.py)."
    )
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = Field(
        None, description='"auto" (the default with tools) needs FLYWHEEL_TOOL_CALL_PARSER; "required" or a named '
        "function constrains the answer to a call.",
    )
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    store: bool | None = Field(
        None, description="false: this conversation is not kept, so Flywheel never learns from it (no Completion "
        "event, no feedback token); an AI judge's questions (trainer/judge.py) ask so. Default: kept.",
    )
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past end-of-sequence.")
    policy_version: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        None, description="Flywheel: pin a policy version (evaluation)."
    )
    _prompt_text: str | None = PrivateAttr(None)
    _prompt_ids: list[int] | None = PrivateAttr(None)
    compare_versions: bool = Field(
        False,
        description="Flywheel: with n=2, answer once with the stable version and once with the canary (in random "
        "order; each choice names its version), so a comparison judges the two head to head.",
    )

    @field_validator("stop")
    @classmethod
    def _stop_strings_bounded(cls, value: str | list[str] | None) -> str | list[str] | None:
        # Checked here, not by Field limits on the union, so the error names `stop` itself.
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not item for item in items):
            raise ValueError("stop strings must not be empty")
        if any(len(item) > MAX_STOP_CHARS for item in items):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys_are_token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        bad = [key for key in value if not key.strip().isdigit()]
        if bad:
            raise ValueError(f"keys must be token ids (non-negative integers as strings), not {bad[:5]!r}")
        return value

    def unhonoured(self) -> list[str]:
        """The set fields (of UNHONOURED) this request asks for; `tool_choice: "none"` asks for nothing."""
        asked = [name for name in UNHONOURED if getattr(self, name) not in (None, [], {})]
        return [name for name in asked if not (name == "tool_choice" and self.tool_choice == "none")]

    def set_text_prompt(self, text: str, ids: list[int]) -> None:
        """A /v1/completions prompt (serving/completions.py): used as it is, no chat template."""
        self._prompt_text, self._prompt_ids = text, ids

    @property
    def prompt_text(self) -> str | None:
        return self._prompt_text

    @property
    def text_prompt_ids(self) -> list[int] | None:
        return self._prompt_ids

    def templated_from_messages(self) -> bool:
        """Whether the messages alone give the prompt the model read: no text prompt, no tools, no tool turns.

        Otherwise the Completion event carries the prompt as text (serving/outputs.py), since the
        trainer, which keeps messages as (role, text), could not render it again.
        """
        return self._prompt_text is None and not self.tools and all(
            m.role != "tool" and not m.tool_calls for m in self.messages
        )

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None
    feedback_token: str | None = Field(None, description="For feedback on this choice; none when `store` was false.")
    policy_version: str | None = Field(None, description="The version of this choice (compare mode).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    policy_version: str
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class StreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    feedback_token: str | None = None
    policy_version: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    policy_version: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flywheel"
    root: str | None = None
    policy_version: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=False)
