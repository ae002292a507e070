"""The feedback REST API against real served completions, the real broker and the real outbox."""

import httpx
import pytest

from flywheel.settings import TOPIC_FEEDBACK
from flywheel.tokens import FeedbackToken
from flywheel.v1 import events_pb2
from tests.conftest import ADMIN_KEY, BOB_API_KEY, TEST_API_KEY, TEST_USER
from tests.kafka_helpers import consume

pytestmark = pytest.mark.engine

ALICE = {"Authorization": f"Bearer {TEST_API_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_API_KEY}"}


@pytest.fixture(scope="module")
def served(serving_server):
    """A real completion with two choices, served to alice."""
    response = httpx.post(
        f"{serving_server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Tell me a fact."}], "max_tokens": 6, "n": 2, "seed": 1},
        headers=ALICE,
        timeout=60,
    )
    assert response.status_code == 200
    return response.json()


def thumbs(completion, index=0, **extra):
    return {
        "completion_id": completion["id"],
        "choice_index": index,
        "rating": "up",
        "feedback_token": completion["choices"][index]["feedback_token"],
        **extra,
    }


def feedback_events(broker, until):
    return consume(broker.bootstrap, TOPIC_FEEDBACK, events_pb2.FeedbackEvent.FromString, until)


def test_thumbs_on_a_served_completion_is_accepted_and_published(feedback_server, served, broker):
    body = thumbs(served, 1, rating="down", comment="too vague", dimensions={"helpfulness": 2}, flags=["incorrect"])
    response = httpx.post(f"{feedback_server.url}/v1/feedback", json=body, headers=ALICE)
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    events = feedback_events(broker, lambda evs: any(e.event_id == event_id for e in evs))
    event = next(e for e in events if e.event_id == event_id)
    assert event.completion_id == served["id"] and event.user_id == TEST_USER
    assert event.policy_version == "base" and list(event.choice_policy_versions) == ["base"]
    assert event.WhichOneof("kind") == "thumbs"
    assert event.thumbs.choice_index == 1 and event.thumbs.rating == events_pb2.RATING_DOWN
    assert event.thumbs.comment == "too vague" and dict(event.thumbs.dimensions) == {"helpfulness": 2}
    assert list(event.thumbs.flags) == ["incorrect"]


def test_a_retry_with_its_key_is_the_same_event_and_a_change_of_mind_is_a_new_one(feedback_server, served, broker):
    url = f"{feedback_server.url}/v1/feedback"
    first = httpx.post(url, json=thumbs(served, 0, rating="up", idempotency_key="click-1"), headers=ALICE).json()
    retry = httpx.post(url, json=thumbs(served, 0, rating="up", idempotency_key="click-1"), headers=ALICE).json()
    assert retry["event_id"] == first["event_id"] and retry["duplicate"] is True
    changed = httpx.post(url, json=thumbs(served, 0, rating="down"), headers=ALICE).json()
    back = httpx.post(url, json=thumbs(served, 0, rating="up"), headers=ALICE).json()  # up, down, up: the latest wins
    assert len({first["event_id"], changed["event_id"], back["event_id"]}) == 3
    assert changed["duplicate"] is False and back["duplicate"] is False
    wanted = {first["event_id"], changed["event_id"], back["event_id"]}
    events = feedback_events(broker, lambda evs: wanted <= {e.event_id for e in evs})
    assert sum(e.event_id == first["event_id"] for e in events) == 1
    ours = [e for e in events if e.event_id in wanted]
    assert [e.thumbs.rating for e in ours] == [events_pb2.RATING_UP, events_pb2.RATING_DOWN, events_pb2.RATING_UP]


def test_comparisons_pair_and_ranking(feedback_server, served, broker):
    tokens = [c["feedback_token"] for c in served["choices"]]
    url = f"{feedback_server.url}/v1/comparisons"
    pair = {"completion_id": served["id"], "feedback_tokens": tokens, "preferred_choice_index": 1,
            "rejected_choice_index": 0, "strength": "much_better"}  # fmt: skip
    ranking = {"completion_id": served["id"], "feedback_tokens": tokens, "ranking": [0, 1], "strength": "tie"}
    ids = [httpx.post(url, json=b, headers=ALICE).json()["event_id"] for b in (pair, ranking)]
    events = feedback_events(broker, lambda evs: set(ids) <= {e.event_id for e in evs})
    by_id = {e.event_id: e for e in events}
    assert list(by_id[ids[0]].comparison.ranking) == [1, 0]
    assert by_id[ids[0]].comparison.strength == events_pb2.COMPARISON_STRENGTH_MUCH_BETTER
    assert list(by_id[ids[1]].comparison.ranking) == [0, 1]
    assert list(by_id[ids[1]].choice_policy_versions) == ["base", "base"]


def correction(completion, index=0, **extra):
    return {
        "completion_id": completion["id"],
        "choice_index": index,
        "feedback_token": completion["choices"][index]["feedback_token"],
        "text": "A shorter, clearer answer.",
        **extra,
    }


def test_a_correction_is_accepted_once_per_key_and_published_with_the_rewrite(feedback_server, served, broker):
    url = f"{feedback_server.url}/v1/corrections"
    body = correction(served, 1, comment="say it plainly", idempotency_key="edit-1")
    first = httpx.post(url, json=body, headers=ALICE)
    assert first.status_code == 202, first.text
    retry = httpx.post(url, json=body, headers=ALICE).json()
    assert retry["event_id"] == first.json()["event_id"] and retry["duplicate"] is True
    event_id = first.json()["event_id"]
    events = feedback_events(broker, lambda evs: any(e.event_id == event_id for e in evs))
    assert sum(e.event_id == event_id for e in events) == 1
    event = next(e for e in events if e.event_id == event_id)
    assert event.WhichOneof("kind") == "correction" and event.user_id == TEST_USER
    assert event.completion_id == served["id"] and event.policy_version == "base"
    assert event.correction.choice_index == 1 and event.correction.text == "A shorter, clearer answer."
    assert event.correction.comment == "say it plainly"
    metrics = httpx.get(f"{feedback_server.url}/metrics").text
    assert 'flywheel_feedback_events_accepted_total{kind="correction",transport="rest"}' in metrics


def _forged(completion, user=TEST_USER):
    return FeedbackToken("not-the-secret").issue(completion["id"], 0, 2, user, "base")


def _bad_cases(served):
    good = thumbs(served, 0)
    tokens = [c["feedback_token"] for c in served["choices"]]
    rewrite = correction(served, 0)
    return {
        "empty rewrite": ("/v1/corrections", {**rewrite, "text": ""}, ALICE, 400),
        "blank rewrite": ("/v1/corrections", {**rewrite, "text": "  \n "}, ALICE, 400),
        "rewrite too long": ("/v1/corrections", {**rewrite, "text": "x" * 8001}, ALICE, 400),
        "rewrite with another choice's token": ("/v1/corrections", {**rewrite, "choice_index": 1}, ALICE, 403),
        "rewrite with another user's token": ("/v1/corrections", rewrite, BOB, 403),
        "rewrite without a token": (
            "/v1/corrections", {k: v for k, v in rewrite.items() if k != "feedback_token"}, ALICE, 400),
        "forged token": ("/v1/feedback", {**good, "feedback_token": _forged(served)}, ALICE, 403),
        "altered token": ("/v1/feedback", {**good, "feedback_token": good["feedback_token"][:-3] + "abc"}, ALICE, 403),
        "other user's token": ("/v1/feedback", good, BOB, 403),
        "token for another choice": ("/v1/feedback", {**good, "choice_index": 1}, ALICE, 403),
        "token for another completion": ("/v1/feedback", {**good, "completion_id": "chatcmpl-other"}, ALICE, 403),
        "unknown rating": ("/v1/feedback", {**good, "rating": "meh"}, ALICE, 400),
        "dimension out of range": ("/v1/feedback", {**good, "dimensions": {"helpfulness": 9}}, ALICE, 400),
        "unknown dimension": ("/v1/feedback", {**good, "dimensions": {"vibes": 3}}, ALICE, 400),
        "unknown flag": ("/v1/feedback", {**good, "flags": ["spicy"]}, ALICE, 400),
        "comment too long": ("/v1/feedback", {**good, "comment": "x" * 2001}, ALICE, 400),
        "missing token": ("/v1/feedback", {k: v for k, v in good.items() if k != "feedback_token"}, ALICE, 400),
        "negative choice": ("/v1/feedback", {**good, "choice_index": -1}, ALICE, 400),
        "unknown field": ("/v1/feedback", {**good, "surprise": 1}, ALICE, 400),
        "comparison with itself": (
            "/v1/comparisons", {"completion_id": served["id"], "feedback_tokens": tokens,
                                "preferred_choice_index": 0, "rejected_choice_index": 0}, ALICE, 400),
        "ranking not a permutation": (
            "/v1/comparisons", {"completion_id": served["id"], "feedback_tokens": tokens, "ranking": [0, 0]},
            ALICE, 400),
        "pair and ranking both": (
            "/v1/comparisons", {"completion_id": served["id"], "feedback_tokens": tokens, "ranking": [0, 1],
                                "preferred_choice_index": 0, "rejected_choice_index": 1}, ALICE, 400),
        "tokens in the wrong order": (
            "/v1/comparisons", {"completion_id": served["id"], "feedback_tokens": tokens[::-1], "ranking": [0, 1]},
            ALICE, 403),
        "one token too few": (
            "/v1/comparisons", {"completion_id": served["id"], "feedback_tokens": tokens[:1], "ranking": [0]},
            ALICE, 400),
    }  # fmt: skip


def test_every_bad_request_is_a_clear_4xx_and_nothing_is_published(feedback_server, served, broker):
    before = httpx.get(f"{feedback_server.url}/readyz").json()["outbox_pending"]
    for name, (path, body, headers, status) in _bad_cases(served).items():
        response = httpx.post(f"{feedback_server.url}{path}", json=body, headers=headers)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["message"], name
    invalid = httpx.post(
        f"{feedback_server.url}/v1/feedback",
        content=b"{not json",
        headers={**ALICE, "content-type": "application/json"},
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_json"
    huge = httpx.post(f"{feedback_server.url}/v1/feedback", content=b"x" * 70_000, headers=ALICE)
    assert huge.status_code == 413
    # A marker event after the bad ones: once it is on the topic, nothing from before is missing.
    marker = httpx.post(f"{feedback_server.url}/v1/feedback", json=thumbs(served, 1, comment="marker"), headers=ALICE)
    marker_id = marker.json()["event_id"]
    events = feedback_events(broker, lambda evs: any(e.event_id == marker_id for e in evs))
    assert not any(e.user_id == "bob" for e in events)
    assert not any(e.completion_id == "chatcmpl-other" for e in events)
    assert not any(e.HasField("thumbs") and e.thumbs.rating == events_pb2.RATING_UNSPECIFIED for e in events)
    assert httpx.get(f"{feedback_server.url}/readyz").json()["outbox_pending"] <= before + 1
    metrics = httpx.get(f"{feedback_server.url}/metrics").text
    assert 'flywheel_feedback_events_rejected_total{kind="thumbs",reason="other_user"}' in metrics
    assert 'flywheel_feedback_events_rejected_total{kind="comparison",reason="invalid"}' in metrics
    assert 'flywheel_feedback_events_rejected_total{kind="correction",reason="token_mismatch"}' in metrics


def test_thumbs_by_policy_version_metric(feedback_server, served):
    httpx.post(f"{feedback_server.url}/v1/feedback", json=thumbs(served, 1, comment="metric"), headers=ALICE)
    metrics = httpx.get(f"{feedback_server.url}/metrics").text
    assert 'flywheel_feedback_thumbs_total{policy_version="base",rating="up"}' in metrics
    assert "flywheel_feedback_outbox_depth" in metrics
    assert "flywheel_feedback_publish_latency_seconds_count" in metrics


def test_import_needs_the_admin_key_and_publishes_pairs(feedback_server, broker):
    pairs = [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello! How can I help?",
              "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},
             {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
             {"chosen": "no dialogue", "rejected": "at all"}]  # fmt: skip
    url = f"{feedback_server.url}/v1/preferences/import"
    assert httpx.post(url, json={"pairs": pairs}, headers=ALICE).status_code == 401
    result = httpx.post(url, json={"pairs": pairs, "source": "test"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert result.status_code == 202
    body = result.json()
    assert body["accepted"] + body["duplicates"] == 2 and [r["index"] for r in body["rejected"]] == [2]
    events = feedback_events(
        broker, lambda evs: sum(e.HasField("external_pair") and e.external_pair.source == "test" for e in evs) >= 2
    )
    pair = next(e.external_pair for e in events if e.HasField("external_pair") and e.external_pair.chosen == "4")
    assert [(m.role, m.content) for m in pair.prompt] == [("user", "2+2?")] and pair.rejected == "5"
