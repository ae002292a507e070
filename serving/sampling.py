"""From an OpenAI chat request to vLLM's inputs: every check that can fail before generation starts.

A request that asks for what this server cannot honour, or more than it allows, is refused with a
400 that names the field (flywheel.errors.APIError); nothing reaches the engine until it passes.
"""

from __future__ import annotations

from jinja2 import TemplateError
from vllm import SamplingParams
from vllm.entrypoints.generate.base.protocol import structured_outputs_from_response_format
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import StructuredOutputsParams
from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

from flywheel.errors import APIError
from flywheel.settings import ServingSettings
from serving.protocol import UNHONOURED, ChatCompletionRequest
from serving.tools import call_constraint, check_tools


def check_limits(request: ChatCompletionRequest, settings: ServingSettings, tokenizer) -> None:
    """A 400 for what the request asks that this server refuses or allows no more of."""
    s = settings
    refuse_unhonoured(request)
    check_tools(request, tokenizer, s.tool_call_parser)
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
    if request.n > s.max_n:
        raise APIError(400, f"n must be at most {s.max_n}, got {request.n}", param="n", code="n_too_large")
    if request.n > 1 and request.temperature == 0 and not request.compare_versions:
        raise APIError(400, "n must be 1 with temperature 0 (greedy decoding gives one answer)", param="n")
    if request.compare_versions:
        if request.n != 2:
            raise APIError(400, f"compare_versions needs n=2, got n={request.n}", param="n")
        if request.policy_version is not None:
            raise APIError(400, "compare_versions and policy_version exclude each other", param="policy_version")
    if len(request.messages) > s.max_messages:
        raise APIError(400, f"at most {s.max_messages} messages per request", param="messages")
    max_tokens = request.requested_max_tokens()
    if max_tokens is not None and max_tokens > s.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens must be at most {s.max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    if request.top_logprobs is not None:
        if not request.logprobs:
            raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
        if request.top_logprobs > s.max_top_logprobs:
            raise APIError(400, f"top_logprobs must be at most {s.max_top_logprobs}", param="top_logprobs")


def refuse_unhonoured(request: ChatCompletionRequest) -> None:
    """A 400 naming the first field asked for that this server cannot honour (see UNHONOURED)."""
    for name in request.unhonoured():
        raise APIError(400, f"{name} cannot be honoured: this server does not offer {UNHONOURED[name]}", param=name,
                       code="unsupported_parameter")  # fmt: skip


def prompt_ids(request: ChatCompletionRequest, tokenizer) -> list[int]:
    if request.text_prompt_ids is not None:  # /v1/completions: the prompt as given
        return request.text_prompt_ids
    messages = [m.for_template() for m in request.messages]
    if all(not m["content"].strip() and "tool_calls" not in m for m in messages):
        raise APIError(400, "messages must contain some non-empty content", param="messages", code="empty_messages")
    if request.messages[-1].role == "assistant":
        raise APIError(
            400, "the last message must not be from the assistant", param="messages", code="invalid_value"
        )
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools] if request.tools else None
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except (TemplateError, TypeError, ValueError) as exc:  # the model's template refuses these messages
        raise APIError(400, f"the served model's chat template cannot render these messages: {exc}",
                       param="messages") from None  # fmt: skip
    return list(tokenizer.encode(text, add_special_tokens=False))


def structured_outputs(request: ChatCompletionRequest) -> StructuredOutputsParams | None:
    """vLLM's structured-output constraint for `response_format`, or for a "required" or named tool call
    (serving/tools.py), checked now (a bad schema is a 400)."""
    response_format, field = request.response_format, "response_format"
    if response_format is None or response_format.type == "text":
        constraint, field = call_constraint(request), "tools"
        if constraint is None:
            return None
    elif response_format.type == "json_schema" and (
        response_format.json_schema is None or response_format.json_schema.json_schema is None
    ):
        raise APIError(400, "response_format of type json_schema needs json_schema.schema", param="response_format")
    else:
        constraint = structured_outputs_from_response_format(None, response_format)
    try:
        validate_xgrammar_grammar(SamplingParams(structured_outputs=constraint))
    except (VLLMValidationError, ValueError) as exc:
        raise APIError(400, f"{field}: {exc}", param=field) from None
    return constraint


def logit_bias(request: ChatCompletionRequest, tokenizer) -> dict[int, float] | None:
    if not request.logit_bias:
        return None
    bias = {int(token): value for token, value in request.logit_bias.items()}
    vocabulary = len(tokenizer)
    outside = sorted(token for token in bias if token >= vocabulary)
    if outside:
        raise APIError(400, f"logit_bias names token ids outside the vocabulary (size {vocabulary}): "
                            f"{outside[:5]}", param="logit_bias")  # fmt: skip
    return bias
