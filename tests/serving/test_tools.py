"""Tool calls through the OpenAI SDK against real vLLM: a tiny model whose chat template has tools.

The model is random, so only the constraint of "required" or a named function can make its answer
a call; "auto" is read by vLLM's hermes parser, checked here on the text such a model writes.
"""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from transformers import AutoTokenizer

from flywheel.settings import TOPIC_COMPLETIONS, ServingSettings
from flywheel.v1 import events_pb2
from serving.protocol import ChatCompletionRequest
from serving.tools import ToolStream, tool_output
from tests.conftest import TEST_API_KEY, serving_env, start_serving
from tests.kafka_helpers import consume
from trainer.dataset import DatasetStore
from trainer.reward import prompt_ids

TEMPLATE = """\
{%- if tools %}<|im_start|>system
You can call these functions:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>\
{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False},
}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}  # fmt: skip
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_model(tiny_model, tmp_path_factory):
    target = tmp_path_factory.mktemp("tools-model") / "tiny-tools"
    shutil.copytree(tiny_model, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    (target / "chat_template.jinja").unlink(missing_ok=True)
    return target


@pytest.fixture(scope="module")
def client(tools_model, broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools-serving")
    server = start_serving(tools_model, tmp, serving_env(tmp, broker.bootstrap, FLYWHEEL_TOOL_CALL_PARSER="hermes",
                                                         FLYWHEEL_MAX_TOKENS_LIMIT="128"))  # fmt: skip
    try:
        yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_API_KEY, max_retries=0)
    finally:
        server.stop()


pytestmark = pytest.mark.engine


def test_a_named_function_is_called_with_arguments_that_fit_its_schema(client, broker, tools_model, tmp_path):
    for seed in range(2):
        completion = client.chat.completions.create(
            model="flywheel", messages=MESSAGES, tools=[WEATHER, TIME], max_tokens=96, seed=seed,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )  # fmt: skip
        choice = completion.choices[0]
        assert choice.message.content is None and choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert call.function.name == "get_weather" and call.id and call.type == "function"
        assert set(arguments) == {"city", "days"} and 1 <= arguments["days"] <= 7
        assert choice.model_extra["feedback_token"], "a call is rated like any answer"

    # the event carries the prompt as rendered, tools included; the trainer reads back those tokens
    events = consume(broker.bootstrap, TOPIC_COMPLETIONS, events_pb2.Completion.FromString,
                     lambda evs: any(e.completion_id == completion.id for e in evs))  # fmt: skip
    (event,) = [e for e in events if e.completion_id == completion.id]
    assert "The weather in a city." in event.prompt_text and event.messages[0].content == MESSAGES[0]["content"]
    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString())])
    ((_, messages),) = store.prompts(10)
    assert prompt_ids(AutoTokenizer.from_pretrained(tools_model), messages) == list(event.prompt_token_ids)


def test_required_streams_the_calls_as_deltas_and_the_next_turn_takes_their_results(client):
    stream = client.chat.completions.create(model="flywheel", messages=MESSAGES, tools=[WEATHER, TIME], seed=3,
                                            tool_choice="required", parallel_tool_calls=False, max_tokens=96,
                                            stream=True)  # fmt: skip
    chunks = [chunk for chunk in stream if chunk.choices]
    pieces = [call for chunk in chunks for call in chunk.choices[0].delta.tool_calls or []]
    assert chunks[-1].choices[0].finish_reason == "tool_calls", chunks[-1]
    first = pieces[0]
    assert first.id and first.type == "function" and first.function.name in {"get_weather", "get_time"}
    assert len(pieces) > 2, "the arguments arrive as they are generated, not whole at the end"
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces)
    json.loads(arguments)
    assert not any(chunk.choices[0].delta.content for chunk in chunks), "a call never arrives as content"
    follow_up = [*MESSAGES,
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": first.id, "type": "function",
                      "function": {"name": first.function.name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": first.id, "content": "Sunny, 21 C."}]  # fmt: skip
    answer = client.chat.completions.create(model="flywheel", messages=follow_up, tools=[WEATHER], max_tokens=8,
                                            tool_choice="none")  # fmt: skip
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content is not None


def test_the_sdk_s_stream_helper_assembles_a_streamed_named_call(client):
    with client.chat.completions.stream(
        model="flywheel", messages=MESSAGES, tools=[WEATHER], max_tokens=96, seed=1,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:  # fmt: skip
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city", "days"}


@pytest.mark.parametrize(("tool_choice", "text"), [
    (None, 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'),
    ("required", '[{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}]'),
    ({"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris", "days": 2}'),
])  # fmt: skip
def test_a_call_streams_its_name_once_then_its_arguments_token_by_token(tools_model, tool_choice, text):
    tokenizer = AutoTokenizer.from_pretrained(tools_model)
    body = {"messages": MESSAGES, "tools": [WEATHER]} | ({"tool_choice": tool_choice} if tool_choice else {})
    stream = ToolStream(ChatCompletionRequest.model_validate(body), tokenizer, "hermes")
    ids, sent, deltas = tokenizer.encode(text, add_special_tokens=False), "", []
    for i, token in enumerate(ids):
        decoded = tokenizer.decode(ids[: i + 1])
        delta = stream.delta(decoded[len(sent) :], [token], finished=i == len(ids) - 1)
        sent = decoded
        deltas += [delta] if delta is not None else []
    pieces = [call for delta in deltas for call in delta.tool_calls or []]
    assert stream.called and pieces[0].id and pieces[0].function.name == "get_weather"
    assert len(pieces) > 2 and all(p.id is None and p.function.name is None for p in pieces[1:])
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == {"city": "Paris", "days": 2}
    assert "".join(d.content or "" for d in deltas) == ("Let me look." if tool_choice is None else "")


def test_auto_is_read_by_the_model_familys_parser_and_refused_without_one(client, tools_model):
    from transformers import AutoTokenizer

    request = ChatCompletionRequest.model_validate({"messages": MESSAGES, "tools": [WEATHER]})
    tokenizer = AutoTokenizer.from_pretrained(tools_model)
    text = 'Let me look.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'
    out = tool_output(request, text, tokenizer, "hermes")
    assert out.content == "Let me look." and out.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in out.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 2})]
    assert tool_output(request, "Just text.", tokenizer, "hermes").tool_calls == []

    answer = client.chat.completions.create(model="flywheel", messages=MESSAGES, tools=[WEATHER], max_tokens=8)
    assert answer.choices[0].message.tool_calls is None  # a random model writes no call; its text is the answer
    assert ServingSettings().tool_call_parser == "", "auto needs a parser, set per model family"


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not among the tools"),
    ({"tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
    ({"tool_choice": {"type": "function", "function": "get_weather"}}, "tool_choice", "named tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": ["get_weather"]}}}, "tool_choice", "named"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "response_format", "exclude"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
      "tool_choice": "required"}, "tools", "tools"),
])  # fmt: skip
def test_a_tool_request_that_cannot_be_honoured_is_a_400_naming_the_field(client, body, param, says):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=8,
                                       **{"tools": [WEATHER], **body})  # fmt: skip
    assert excinfo.value.body["param"].startswith(param) and says in excinfo.value.body["message"]
