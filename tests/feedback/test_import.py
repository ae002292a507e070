"""The preference-import route: the admin key before the body, bounded pair fields."""

from fastapi.testclient import TestClient

from feedback.app import build_app
from flywheel.settings import FeedbackSettings
from tests.conftest import ADMIN_KEY, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def app(tmp_path, **extra):
    settings = FeedbackSettings(
        data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}", feedback_token_secret="s",
        admin_key=ADMIN_KEY, **extra,
    )  # fmt: skip
    return build_app(settings, start_grpc=False)


def test_a_large_import_without_the_admin_key_is_a_401_not_a_413(tmp_path):
    with TestClient(app(tmp_path, max_import_body_bytes=1_000)) as client:
        body = b'{"pairs": [{"prompt": "' + b"x" * 5_000 + b'", "chosen": "a", "rejected": "b"}]}'
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.post("/v1/preferences/import", content=body, headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "invalid_admin_key"
        assert client.post("/v1/preferences/import", content=body, headers=ADMIN).status_code == 413


def test_an_overlong_prompt_is_a_400_naming_the_field(tmp_path):
    with TestClient(app(tmp_path)) as client:
        pairs = [{"prompt": prompt, "chosen": "4", "rejected": "5"} for prompt in ("2+2?", "x" * 50_001)]
        response = client.post("/v1/preferences/import", json={"pairs": pairs}, headers=ADMIN)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "pairs.1.prompt"
