"""Without anonymous mode, feedback needs a known API key; limits answer 429 with Retry-After."""

import sqlite3
import time

from fastapi.testclient import TestClient

from feedback.app import build_app
from flywheel.settings import FeedbackSettings
from flywheel.tokens import FeedbackToken
from tests.conftest import free_port


def settings(tmp_path, **extra) -> FeedbackSettings:
    return FeedbackSettings(
        data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}", feedback_token_secret="s",
        api_keys="k1:alice", shutdown_drain_s=0, **extra,  # no broker: nothing would drain
    )  # fmt: skip


KEY = {"Authorization": "Bearer k1"}


def thumbs(i: int = 0) -> dict:
    return {"completion_id": f"c{i}", "choice_index": 0, "rating": "up",
            "feedback_token": FeedbackToken("s").issue(f"c{i}", 0, 1, "alice", "base")}  # fmt: skip


def test_unknown_or_missing_key_is_401_when_anonymous_is_off(tmp_path):
    app = build_app(settings(tmp_path, allow_anonymous=False), start_grpc=False)
    with TestClient(app) as client:
        assert client.post("/v1/feedback", json=thumbs()).status_code == 401
        assert client.post("/v1/feedback", json=thumbs(), headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = client.post("/v1/feedback", json=thumbs(), headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 202


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    app = build_app(settings(tmp_path, rate_limit_per_s=1, rate_limit_burst=3), start_grpc=False)
    with TestClient(app) as client:
        codes = [client.post("/v1/feedback", json=thumbs(i), headers={"Authorization": "Bearer k1"}) for i in range(5)]
        assert [r.status_code for r in codes] == [202, 202, 202, 429, 429]
        assert int(codes[3].headers["Retry-After"]) >= 1
        assert codes[3].json()["error"]["code"] == "rate_limited"


def test_outbox_full_answers_503_and_keeps_what_it_accepted(tmp_path):
    # Kafka is unreachable, so nothing drains: the outbox fills up and then refuses.
    app = build_app(settings(tmp_path, outbox_max_pending=2), start_grpc=False)
    with TestClient(app) as client:
        codes = [client.post("/v1/feedback", json=thumbs(i), headers={"Authorization": "Bearer k1"}) for i in range(3)]
        assert [r.status_code for r in codes] == [202, 202, 503]
        assert "Retry-After" in codes[2].headers
        assert client.get("/readyz").json()["outbox_pending"] == 2


def test_a_non_ascii_or_expired_token_is_a_403_never_a_500(tmp_path):
    app = build_app(settings(tmp_path, feedback_token_ttl_s=3600), start_grpc=False)
    expired = FeedbackToken("s").issue("c0", 0, 1, "alice", "base", issued_at=int(time.time()) - 7200)
    with TestClient(app) as client:
        for token in ("fw1.é.x", "fw1." + thumbs()["feedback_token"].split(".", 1)[1] + "é", "ｔｏｋｅｎ"):  # noqa: RUF001
            response = client.post("/v1/feedback", json={**thumbs(), "feedback_token": token}, headers=KEY)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "invalid_token"
        response = client.post("/v1/feedback", json={**thumbs(), "feedback_token": expired}, headers=KEY)
        assert response.status_code == 403 and response.json()["error"]["code"] == "expired_token"
        assert "expired" in response.json()["error"]["message"]
        assert client.post("/v1/feedback", json=thumbs(), headers=KEY).status_code == 202


class FullDisk:
    """The outbox's writer connection while the disk is full: every insert fails as SQLite's does."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def executemany(self, *_):
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name):
        return getattr(self.connection, name)


def test_a_full_disk_under_the_outbox_answers_503_and_the_retry_is_accepted_once(tmp_path):
    app = build_app(settings(tmp_path), start_grpc=False)
    with TestClient(app) as client:
        assert client.post("/v1/feedback", json=thumbs(0), headers=KEY).status_code == 202
        outbox = app.state.outbox
        outbox._writer = FullDisk(outbox._writer)
        retried = {**thumbs(1), "idempotency_key": "retry-me"}
        refused = [client.post("/v1/feedback", json=retried, headers=KEY) for _ in range(3)]
        assert {r.status_code for r in refused} == {503}, refused[-1].text
        assert refused[0].json()["error"]["code"] == "outbox_unavailable"
        assert "full" in refused[0].json()["error"]["message"] and "Retry-After" in refused[0].headers
        outbox._writer = outbox._writer.connection  # space again
        accepted = client.post("/v1/feedback", json=retried, headers=KEY)
        assert accepted.status_code == 202 and accepted.json()["duplicate"] is False
        assert client.post("/v1/feedback", json=retried, headers=KEY).json()["duplicate"] is True
        assert client.get("/readyz").json()["outbox_pending"] == 2
        metrics = client.get("/metrics").text
        assert 'flywheel_feedback_events_rejected_total{kind="thumbs",reason="outbox_unavailable"} 3.0' in metrics
