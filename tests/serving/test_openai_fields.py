"""What an OpenAI client asks for is honoured or refused with a 400 naming the field (real vLLM, openai SDK)."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Name a colour."}]


class Colour(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colour: Literal["red", "green", "blue"]
    sure: bool


@pytest.fixture(scope="module")
def client(serving_server):
    return openai.OpenAI(base_url=f"{serving_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


def test_parse_with_a_pydantic_model_gets_an_answer_of_that_model(client):
    # A random tiny model: only the constraint can make its answer parse.
    for seed in range(3):
        completion = client.chat.completions.parse(model="flywheel", messages=MESSAGES, response_format=Colour,
                                                   max_tokens=64, temperature=1.0, seed=seed)  # fmt: skip
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Colour)
        assert choice.model_extra["feedback_token"]  # a structured answer can be rated like any other


def test_json_mode_streams_a_json_object(client):
    stream = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=64, seed=1,
                                            response_format={"type": "json_object"}, stream=True)  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if finish == ["stop"]:
        assert isinstance(json.loads(text), dict)
    else:  # cut at max_tokens: still the start of an object
        assert text.lstrip().startswith("{")


def test_logit_bias_forces_a_token_or_bans_one(client, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    token = tokenizer.encode("Blue", add_special_tokens=False)[0]
    forced = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=6, temperature=0,
                                            logit_bias={str(token): 100})  # fmt: skip
    assert forced.choices[0].message.content == tokenizer.decode([token] * 6)

    free = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=3, temperature=0,
                                          logprobs=True, top_logprobs=2)  # fmt: skip
    first = free.choices[0].logprobs.content[0]
    greedy = tokenizer.encode(free.choices[0].message.content, add_special_tokens=False)[0]
    banned = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=3, temperature=0,
                                            logprobs=True, logit_bias={str(greedy): -100})  # fmt: skip
    assert banned.choices[0].logprobs.content[0].token != first.token
    assert banned.choices[0].logprobs.content[0].token == first.top_logprobs[1].token  # the runner-up


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "get_weather", "parameters": {"type": "object"}}]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "Blue."}),
    ("reasoning_effort", "high"),
])  # fmt: skip
def test_a_field_that_cannot_be_honoured_is_a_400_that_names_it(serving_server, field, value):
    body = {"messages": MESSAGES, "max_tokens": 4, field: value}
    response = httpx.post(f"{serving_server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert field in error["message"]


def test_tools_are_refused_because_the_template_has_none(client):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=4, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}])
    assert "chat template has no tools" in excinfo.value.body["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"logit_bias": {"not-a-token": 5}}, "logit_bias"),
    ({"logit_bias": {"7": 101}}, "logit_bias.7"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"),
    ({"modalities": ["text", "audio"]}, "modalities.1"),
])  # fmt: skip
def test_a_bad_value_of_an_honoured_field_is_a_400_that_names_it(serving_server, body, param):
    response = httpx.post(f"{serving_server.url}/v1/chat/completions",
                          json={"messages": MESSAGES, "max_tokens": 4, **body}, timeout=60)  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_fields_and_tool_choice_none_are_ignored_as_openai_does(serving_server):
    body = {"messages": MESSAGES, "max_tokens": 4, "tool_choice": "none", "no_such_field": 1,
            "response_format": {"type": "text"}, "modalities": ["text"]}  # fmt: skip
    response = httpx.post(f"{serving_server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
