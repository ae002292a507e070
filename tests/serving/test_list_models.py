"""/v1/models without an engine: it names the served model and never a file path."""

from __future__ import annotations

from fastapi.testclient import TestClient

from flywheel.settings import ServingSettings
from serving.app import build_app
from serving.policy import PolicyRouter, ServedPolicy


def test_the_model_list_shows_no_filesystem_path():
    app = build_app(ServingSettings(grpc_port=0, served_model_name="flywheel"))  # lifespan not run: no engine
    app.state.model_path = "/srv/secret-dir/models/SmolLM2-135M-Instruct"  # what the lifespan would set
    app.state.policy_router = PolicyRouter(stable=ServedPolicy("v7"))
    response = TestClient(app).get("/v1/models")
    assert response.status_code == 200
    [card] = response.json()["data"]
    assert (card["id"], card["root"], card["policy_version"]) == ("flywheel", "flywheel", "v7")
    assert "/srv" not in response.text and "secret-dir" not in response.text
