"""Tool calls: OpenAI's `tools` and `tool_choice`, on vLLM's own pieces.

- The tools reach the model through its chat template (`apply_chat_template(tools=...)`); a
  template that never reads `tools` cannot call them, and such a request is a 400 naming `tools`.
- `tool_choice` "required" or a named function: vLLM's JSON schema of a call
  (`vllm.tool_parsers.utils.get_json_schema_from_tools`) constrains the answer through structured
  outputs, so any model answers with a well-formed call; it is read back into `tool_calls` here.
- "auto" (OpenAI's default once tools are given): the model decides, and a vLLM tool parser for
  its family (`FLYWHEEL_TOOL_CALL_PARSER`, e.g. `hermes`) reads its calls out of the text; with no
  parser set, "auto" is a 400 (asking for "required", a named function or "none" still works).
- "none": the tools are in the prompt, no call is made.

A streamed response with tools streams its calls as OpenAI does, with vLLM's streaming readers
(`ToolStream`): a call's id and name once, then its arguments as they are generated; for "auto"
the parser holds back the model's call markers, so a call never reaches the client as content.
The Completion event keeps the raw text of every choice, so a call is rated and learned from as
any answer is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from vllm.entrypoints.generate.base.protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall
from vllm.sampling_params import StructuredOutputsParams

from flywheel.errors import APIError
from serving.protocol import ChatCompletionRequest, DeltaMessage

log = logging.getLogger(__name__)


@dataclass
class ToolOutput:
    content: str | None
    tool_calls: list[ToolCall]

    @property
    def finish_reason(self) -> str | None:
        return "tool_calls" if self.tool_calls else None


def wants_tools(request: ChatCompletionRequest) -> bool:
    """The request gave tools and may get a call back (any choice but "none")."""
    return bool(request.tools) and request.tool_choice != "none"


def check_tools(request: ChatCompletionRequest, tokenizer, parser_name: str) -> None:
    """A 400 for tools this server cannot honour with the served model's template and settings."""
    if request.tool_choice not in (None, "none") and not request.tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if request.parallel_tool_calls is not None and not request.tools:
        raise APIError(400, "parallel_tool_calls needs tools", param="parallel_tool_calls")
    if not request.tools:
        return
    template = getattr(tokenizer, "chat_template", None) or ""
    if "tools" not in template:
        raise APIError(400, "tools cannot be honoured: the served model's chat template has no tools", param="tools",
                       code="unsupported_parameter")  # fmt: skip
    if request.response_format is not None and request.response_format.type != "text" and wants_tools(request):
        raise APIError(400, "response_format and tools exclude each other: a call has its own schema",
                       param="response_format")  # fmt: skip
    choice = request.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise APIError(400, 'a named tool_choice is {"type": "function", "function": {"name": ...}}',
                           param="tool_choice")  # fmt: skip
        if name not in {t.function.name for t in request.tools}:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    elif choice not in (None, "auto", "none", "required"):
        raise APIError(400, 'tool_choice is "none", "auto", "required" or a named function', param="tool_choice")
    if choice in (None, "auto") and not parser_name:
        raise APIError(400, 'tool_choice "auto" needs a tool call parser for the served model '
                            '(FLYWHEEL_TOOL_CALL_PARSER); "required", a named function and "none" work without',
                       param="tool_choice", code="unsupported_parameter")  # fmt: skip


def call_constraint(request: ChatCompletionRequest) -> StructuredOutputsParams | None:
    """The JSON schema a "required" or named call must follow (vLLM's), as a structured-output constraint."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionNamedToolChoiceParam
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    choice = request.tool_choice
    if not request.tools or choice in (None, "auto", "none"):
        return None
    if isinstance(choice, dict):
        choice = ChatCompletionNamedToolChoiceParam.model_validate(choice)
    try:
        schema = get_json_schema_from_tools(choice, request.tools, request.parallel_tool_calls)
    except ValueError as exc:
        raise APIError(400, f"tools: {exc}", param="tools") from None
    return StructuredOutputsParams(json=schema)


def tool_output(request: ChatCompletionRequest, text: str, tokenizer, parser_name: str) -> ToolOutput:
    """A finished choice's text as OpenAI's message: content, or the calls it makes."""
    choice = request.tool_choice
    if isinstance(choice, dict):  # the constraint made `text` the function's arguments
        try:
            json.loads(text)
        except ValueError:  # cut short by max_tokens: no complete call, as OpenAI answers
            return ToolOutput(text, [])
        return ToolOutput(None, [ToolCall(function=FunctionCall(name=choice["function"]["name"], arguments=text))])
    if choice == "required":  # a JSON array of {"name", "parameters"}
        try:
            calls = json.loads(text)
            return ToolOutput(None, [
                ToolCall(function=FunctionCall(name=c["name"], arguments=json.dumps(c["parameters"]))) for c in calls
            ])  # fmt: skip
        except (ValueError, TypeError, KeyError):  # cut short by max_tokens: no complete call
            return ToolOutput(text, [])
    return _parsed(request, text, tokenizer, parser_name)


def _parsed(request: ChatCompletionRequest, text: str, tokenizer, parser_name: str) -> ToolOutput:
    """"auto": the model's own call syntax, read by vLLM's parser for its family."""
    extracted = _parser(parser_name, tokenizer).extract_tool_calls(text, _vllm_request(request))
    if not extracted.tools_called:
        return ToolOutput(text, [])
    return ToolOutput(extracted.content or None, list(extracted.tool_calls))


def _parser(parser_name: str, tokenizer):
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.get_tool_parser(parser_name)(tokenizer)


def _vllm_request(request: ChatCompletionRequest):
    """The part of the request vLLM's tool parsers read (the tools), as vLLM's own request."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as VllmRequest

    return VllmRequest.model_validate({
        "messages": [{"role": "user", "content": ""}], "tools": [t.model_dump() for t in request.tools],
        "tool_choice": "auto",
    })  # fmt: skip


class ToolStream:
    """One streamed choice of a request with tools, read as it is generated by vLLM's streaming
    readers: a named function's arguments are the text itself; "required" is a JSON array read
    element by element (`extract_required_tool_call_streaming`); "auto" goes through the parser's
    `extract_tool_calls_streaming`, which keeps state, so each choice has its own."""

    def __init__(self, request: ChatCompletionRequest, tokenizer, parser_name: str) -> None:
        self.request, self.tokenizer = request, tokenizer
        self.text, self.token_ids = "", []
        self.announced = False  # a call's id and name were sent
        self.called = False
        auto = request.tool_choice in (None, "auto")
        self.parser = _parser(parser_name, tokenizer) if auto else None
        self.vllm_request = _vllm_request(request) if auto else None

    def delta(self, text: str, token_ids: list[int], finished: bool) -> DeltaMessage | None:
        """What the client gets of a piece of the choice's output (None: nothing yet)."""
        from vllm.tool_parsers.streaming import extract_named_tool_call_streaming, extract_required_tool_call_streaming

        previous_text, previous_ids = self.text, self.token_ids
        self.text, self.token_ids = previous_text + text, previous_ids + list(token_ids)
        choice = self.request.tool_choice
        if isinstance(choice, dict):
            message, self.announced = extract_named_tool_call_streaming(
                delta_text=text, function_name=choice["function"]["name"], function_name_returned=self.announced,
                tool_call_idx=None, tool_call_id_type="random", tokenizer=self.tokenizer,
            )  # fmt: skip
        elif choice == "required":
            message, self.announced = extract_required_tool_call_streaming(
                previous_text=previous_text, current_text=self.text, tool_call_idx=None, tool_call_id_type="random"
            )
        else:
            message = self.parser.extract_tool_calls_streaming(
                previous_text, self.text, text, previous_ids, self.token_ids, list(token_ids), self.vllm_request
            )
            rest = self.parser.get_remaining_unstreamed_args() if finished else ""
            if rest:  # arguments the parser read but had not sent when the choice ended
                last = DeltaToolCall(index=len(self.parser.prev_tool_call_arr) - 1,
                                     function=DeltaFunctionCall(arguments=rest))  # fmt: skip
                calls = [*(message.tool_calls or []), last] if message is not None else [last]
                return self._ours(message.content if message is not None else None, calls)
        if message is None:
            return None
        return self._ours(message.content, message.tool_calls)

    def _ours(self, content: str | None, calls: list[DeltaToolCall] | None) -> DeltaMessage | None:
        if not content and not calls:
            return None
        self.called = self.called or bool(calls)
        return DeltaMessage(content=content or None, tool_calls=calls or None)
