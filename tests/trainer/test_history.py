"""The trainer's /history: thumbs and head-to-head comparisons per version and time bucket, and rounds.

Against a real DatasetStore fed with ingested events; the app is built by the real factory, with
the service (threads, Kafka, torch) replaced by a spec'd mock holding that store.
"""

from __future__ import annotations

import math
import random
from unittest.mock import Mock

import pytest
from fastapi.testclient import TestClient

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK, TrainerSettings
from flywheel.v1 import events_pb2
from tests.trainer.synthetic import completion, feedback
from trainer.app import build_app
from trainer.dataset import DatasetStore
from trainer.records import RoundRecord
from trainer.rollout import Verdict
from trainer.service import TrainerService, TrainerStatus

T0 = 1_700_000_040.0  # a whole minute, so 60 s buckets start at T0
SERVING_ORIGIN = "http://127.0.0.1:8000"


def at(event, seconds: float):
    event.created_at.FromNanoseconds(int(seconds * 1e9))
    return event


class Traffic:
    """Completions and feedback with chosen versions and times, ingested as the trainer ingests them."""

    def __init__(self, store: DatasetStore) -> None:
        self.store, self.rng, self.count = store, random.Random(0), 0

    def completion(self, version: str) -> events_pb2.Completion:
        self.count += 1
        event = completion(self.count, self.rng, version=version, prefix="hist")
        self.store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString())])
        return event

    def thumbs(self, version: str, rating: str, seconds: float) -> events_pb2.FeedbackEvent:
        event = at(feedback(self.completion(version), rating), seconds)
        self.store.ingest([(TOPIC_FEEDBACK, event.SerializeToString())])
        return event

    def comparison(self, versions: list[str], ranking: list[int], seconds: float, tie: bool = False) -> None:
        event = at(feedback(self.completion(versions[0] if versions else "base"), "comparison"), seconds)
        event.comparison.ClearField("ranking")
        event.comparison.ranking.extend(ranking)
        event.ClearField("choice_policy_versions")
        event.choice_policy_versions.extend(versions)
        if tie:
            event.comparison.strength = events_pb2.COMPARISON_STRENGTH_TIE
        self.store.ingest([(TOPIC_FEEDBACK, event.SerializeToString())])


@pytest.fixture
def store(tmp_path) -> DatasetStore:
    store = DatasetStore(tmp_path / "dataset.sqlite")
    yield store
    store.close()


@pytest.fixture
def client(store, tmp_path) -> TestClient:
    settings = TrainerSettings(data_dir=tmp_path, cors_origins=f"{SERVING_ORIGIN},http://localhost:8000")
    app = build_app(settings, base_model="unused")
    service = Mock(spec=TrainerService)
    service.dataset = store
    service.controller = Mock(last_verdict=None)
    app.state.service = service  # no lifespan: nothing starts but the routes
    return TestClient(app)


def bucket(body: dict, version: str, start: float) -> dict:
    (found,) = [b for b in body["buckets"] if b["version"] == version and b["start"] == start]
    return found


def test_thumbs_are_counted_per_version_and_time_bucket(client, store):
    traffic = Traffic(store)
    traffic.thumbs("base", "up", T0 + 5)
    traffic.thumbs("base", "down", T0 + 30)
    traffic.thumbs("base", "down", T0 + 59.9)
    traffic.thumbs("v0001", "up", T0 + 10)
    traffic.thumbs("v0001", "up", T0 + 61)  # the next minute
    traffic.thumbs("v0001", "down", T0 + 125)

    body = client.get("/history", params={"bucket_s": 60}).json()
    assert body["bucket_s"] == 60
    assert bucket(body, "base", T0) == {"version": "base", "start": T0, "up": 1, "down": 2, "wins": 0,
                                            "losses": 0, "ties": 0}  # fmt: skip
    assert [(b["start"] - T0, b["up"], b["down"]) for b in body["buckets"] if b["version"] == "v0001"] == [
        (0, 1, 0),
        (60, 1, 0),
        (120, 0, 1),
    ]
    # wider buckets add up; `since` drops what came before it
    wide = client.get("/history", params={"bucket_s": 3600}).json()
    assert sum(b["up"] + b["down"] for b in wide["buckets"]) == 6
    assert {b["version"] for b in wide["buckets"]} == {"base", "v0001"}
    late = client.get("/history", params={"bucket_s": 60, "since": T0 + 60}).json()
    assert [(b["version"], b["start"] - T0) for b in late["buckets"]] == [("v0001", 60), ("v0001", 120)]
    assert late["comparisons"] == {"total": 0, "across_versions": 0}


def test_a_changed_rating_counts_once_with_its_latest_value(client, store):
    first = Traffic(store).thumbs("v0001", "up", T0 + 1)
    changed = events_pb2.FeedbackEvent()
    changed.CopyFrom(first)
    changed.event_id, changed.idempotency_key = "changed-mind", "changed-mind"
    changed.thumbs.rating = events_pb2.RATING_DOWN
    at(changed, T0 + 2)
    store.ingest([(TOPIC_FEEDBACK, changed.SerializeToString()), (TOPIC_FEEDBACK, first.SerializeToString())])
    (only,) = client.get("/history").json()["buckets"]
    assert (only["version"], only["up"], only["down"]) == ("v0001", 0, 1)


def test_comparisons_across_versions_are_wins_losses_and_ties_and_the_rest_only_totalled(client, store):
    traffic = Traffic(store)
    traffic.comparison(["v0002", "v0001"], [0, 1], T0 + 3)  # v0002 preferred
    traffic.comparison(["v0001", "v0002"], [0, 1], T0 + 4)  # v0001 preferred
    traffic.comparison(["v0001", "v0002"], [1, 0], T0 + 65)  # v0002 preferred, next minute
    traffic.comparison(["v0002", "v0001"], [0, 1], T0 + 66, tie=True)
    traffic.comparison(["v0001", "v0001"], [1, 0], T0 + 67)  # one version: no head-to-head result
    traffic.comparison([], [0, 1], T0 + 68)  # an older event without per-choice versions

    body = client.get("/history", params={"bucket_s": 60}).json()
    assert body["comparisons"] == {"total": 6, "across_versions": 4}
    counts = {(b["version"], b["start"] - T0): (b["wins"], b["losses"], b["ties"]) for b in body["buckets"]}
    assert counts == {
        ("v0001", 0): (1, 1, 0),
        ("v0002", 0): (1, 1, 0),
        ("v0001", 60): (0, 1, 1),
        ("v0002", 60): (1, 0, 1),
    }


def test_rounds_come_oldest_first_with_their_metrics_and_nan_as_null(client, store):
    first = store.begin_round(10)
    store.finish_round(first, "gate_failed", "reward model held-out accuracy 0.400 is below the floor 0.600", "",
                       {"reward_accuracy": 0.4, "pairs_train": 12.0})  # fmt: skip
    second = store.begin_round(20)
    store.finish_round(second, "published", "", "v0001-ab12", {"reward_accuracy": 0.8, "ppo_kl": 0.3,
                       "eval_new_mean_reward": 1.5, "eval_parent_mean_reward": 1.1})  # fmt: skip
    third = store.begin_round(30)
    store.finish_round(third, "gate_failed", "no held-out pairs", "", {"reward_accuracy": math.nan})
    store.begin_round(40)  # running now

    rounds = client.get("/history", params={"rounds": 3}).json()["rounds"]
    assert [(r["round"], r["outcome"]) for r in rounds] == [(second, "published"), (third, "gate_failed"),
                                                            (third + 1, "running")]  # fmt: skip
    assert rounds[0]["version"] == "v0001-ab12"
    assert rounds[0]["metrics"]["eval_new_mean_reward"] == 1.5
    assert rounds[1]["metrics"] == {"reward_accuracy": None}
    assert rounds[2]["finished_at"] is None


def test_status_carries_a_round_without_held_out_pairs_too(client, store):
    record = RoundRecord(1, T0, T0 + 5, "gate_failed", "no held-out pairs", "", 3, {"reward_accuracy": math.nan})
    client.app.state.service.status.return_value = TrainerStatus(
        paused=False, round_running=False, events_ingested=3, pairs_available=0, new_feedback_since_round=0,
        published_version="", recent_rounds=[record],
    )  # fmt: skip
    response = client.get("/status")
    assert response.status_code == 200
    assert response.json()["recent_rounds"][0]["metrics"] == {"reward_accuracy": None}


def test_the_roll_out_controllers_verdict_is_reported(client):
    client.app.state.service.controller.last_verdict = Verdict(0, "waiting for 20 thumbs a side: canary 3/4 up", {})
    assert client.get("/history").json()["rollout_verdict"].startswith("waiting for 20 thumbs a side")


@pytest.mark.parametrize(
    "params",
    [{"bucket_s": 0}, {"bucket_s": "a minute"}, {"bucket_s": 86_401}, {"since": -1}, {"since": "yesterday"},
     {"rounds": 0}, {"rounds": 5000}],
)  # fmt: skip
def test_bad_parameters_are_a_clear_400(client, params):
    response = client.get("/history", params=params)
    assert response.status_code == 400, response.text
    (name,) = params
    assert name in response.json()["error"]["message"]


def test_the_operator_pages_origin_may_read_it_and_others_may_not(client):
    allowed = client.get("/history", headers={"Origin": SERVING_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == SERVING_ORIGIN
    other = client.get("/history", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options(
        "/history", headers={"Origin": SERVING_ORIGIN, "Access-Control-Request-Method": "GET"}
    )  # fmt: skip
    assert preflight.status_code == 200


def test_before_the_service_has_started_it_answers_503(store, tmp_path):
    app = build_app(TrainerSettings(data_dir=tmp_path), base_model="unused")
    response = TestClient(app).get("/history")
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the trainer is starting"
