"""Request limits of the chat API, checked before the engine is involved (no lifespan: no engine)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from flywheel.settings import ServingSettings
from serving.app import build_app

OK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(build_app(ServingSettings(grpc_port=0)))  # not entered: the engine never starts


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "x" * 257, "messages": OK}, "model", "at most 256 characters"),
        ({"messages": OK, "stop": "x" * 257}, "stop", "at most 256 characters"),
        ({"messages": OK, "stop": ["x" * 257]}, "stop", "at most 256 characters"),
        ({"messages": OK, "stop": ["x"] * 17}, "stop", "at most 16 stop strings"),
    ],
)
def test_oversized_fields_are_a_400_naming_the_field(client, body, param, says):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"]


def test_fields_within_the_limits_pass_validation(client):
    body = {"model": "x" * 256, "messages": OK, "stop": ["x" * 256] * 16}
    assert client.post("/v1/chat/completions", json=body).status_code == 503  # valid; the engine is not there
