"""Every kind of bad input gets a 4xx in OpenAI's error shape, and the server keeps serving."""

import httpx
import pytest

pytestmark = pytest.mark.engine

OK = [{"role": "user", "content": "hi"}]

CASES = {
    "no messages": ({"messages": []}, 400, "messages"),
    "messages not a list": ({"messages": "hi"}, 400, "messages"),
    "message without content": ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    "blank content only": ({"messages": [{"role": "user", "content": "   "}]}, 400, "messages"),
    "content part of unknown type": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
        400,
        None,
    ),
    "n zero": ({"messages": OK, "n": 0}, 400, "n"),
    "n over limit": ({"messages": OK, "n": 5}, 400, "n"),
    "max_tokens over limit": ({"messages": OK, "max_tokens": 65}, 400, "max_tokens"),
    "max_tokens zero": ({"messages": OK, "max_tokens": 0}, 400, "max_tokens"),
    "temperature too high": ({"messages": OK, "temperature": 3}, 400, "temperature"),
    "top_p zero": ({"messages": OK, "top_p": 0}, 400, "top_p"),
    "top_logprobs without logprobs": ({"messages": OK, "top_logprobs": 2}, 400, "top_logprobs"),
    "empty stop string": ({"messages": OK, "stop": [""]}, 400, "stop"),
    "last message from assistant": ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
    "context too long": ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
    "prompt plus max_tokens over context": (
        {"messages": [{"role": "user", "content": "word " * 460}], "max_tokens": 64},
        400,
        "messages",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_request_gets_openai_error(serving_server, name):
    body, status, param = CASES[name]
    response = httpx.post(f"{serving_server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_context_error_says_why(serving_server):
    body, _, _ = CASES["context too long"]
    error = httpx.post(f"{serving_server.url}/v1/chat/completions", json=body).json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 512" in error["message"]


def test_invalid_json_is_a_400(serving_server):
    response = httpx.post(
        f"{serving_server.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_a_413_with_or_without_content_length(serving_server):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * 70_000 + b'"}]}'
    response = httpx.post(
        f"{serving_server.url}/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    chunked = httpx.post(
        f"{serving_server.url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413


def test_unknown_route_and_method_use_the_error_shape(serving_server):
    missing = httpx.get(f"{serving_server.url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = httpx.get(f"{serving_server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_server_still_serves_after_bad_input(serving_server):
    for body, _, _ in CASES.values():
        httpx.post(f"{serving_server.url}/v1/chat/completions", json=body, timeout=30)
    response = httpx.post(
        f"{serving_server.url}/v1/chat/completions", json={"messages": OK, "max_tokens": 4}, timeout=60
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
