"""The dataset store: idempotent ingestion, the latest rating wins, late completions join."""

import random

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.v1 import events_pb2
from tests.trainer.synthetic import completion, feedback, polite_index, traffic
from trainer.dataset import DatasetStore
from trainer.kto import kto_examples
from trainer.pairs import build_pairs


def test_replaying_a_batch_stores_nothing_twice(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    records = traffic(30)
    first = store.ingest(records)
    again = store.ingest(records)
    assert (first.stored, first.duplicates) == (60, 0)
    assert (again.stored, again.duplicates) == (0, 60)
    assert store.count_events() == {"completion": 30, "comparison": 10, "thumbs": 20}
    assert store.count_feedback() == 30


def test_the_same_idempotency_key_under_a_new_event_id_counts_once(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    event = completion(0, random.Random(0))
    one = feedback(event, "up", key="client-key-1")
    retry = feedback(event, "up", key="client-key-1")  # a relay or client retry: new event id, same key
    result = store.ingest([(TOPIC_FEEDBACK, one.SerializeToString()), (TOPIC_FEEDBACK, retry.SerializeToString())])
    assert (result.stored, result.duplicates) == (1, 1)


def test_feedback_before_its_completion_waits_and_joins_later(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    event = completion(0, random.Random(0))
    store.ingest([(TOPIC_FEEDBACK, feedback(event, "comparison").SerializeToString())])
    assert store.ranked_completions() == []
    assert store.waiting_feedback() == 1
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString())])
    assert store.waiting_feedback() == 0
    (ranked,) = store.ranked_completions()
    assert "please" in ranked.texts[ranked.ranking[0]].lower()


def test_a_changed_rating_replaces_the_old_one_and_a_late_replay_does_not(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    event = completion(0, random.Random(0))
    up = feedback(event, "up")
    down = events_pb2.FeedbackEvent()
    down.CopyFrom(up)
    down.event_id, down.idempotency_key = "changed-mind", "changed-mind"
    down.thumbs.rating = events_pb2.RATING_DOWN
    down.created_at.FromNanoseconds(up.created_at.ToNanoseconds() + 1_000_000_000)
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString()), (TOPIC_FEEDBACK, down.SerializeToString())])
    store.ingest([(TOPIC_FEEDBACK, up.SerializeToString())])  # older, arrives later: must not win
    (response,) = store.rated_responses()
    assert response.net_rating == -1


def test_undecodable_records_are_skipped_not_fatal(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    result = store.ingest([(TOPIC_FEEDBACK, b"\xff\xfe not protobuf"), *traffic(1)])
    assert (result.stored, result.invalid) == (2, 1)


def test_a_ranking_past_its_choices_is_skipped_and_counted_not_fatal(tmp_path):
    """It raised IndexError past the ValueError/DecodeError handlers, killed ingestion, and again after a restart."""
    store = DatasetStore(tmp_path / "d.sqlite")
    event = completion(0, random.Random(0))
    poisons = []
    for ranking in ([0, 5], [1, 1], [0]):
        poison = feedback(event, "comparison")
        poison.choice_policy_versions.extend(["base", "v0001"])  # compare mode: versions per choice
        del poison.comparison.ranking[:]
        poison.comparison.ranking.extend(ranking)
        poisons.append((TOPIC_FEEDBACK, poison.SerializeToString()))
    result = store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString()), *poisons, *traffic(2, seed=3)])
    assert (result.stored, result.invalid) == (5, 3)
    assert store.count_events() == {"completion": 3, "comparison": 1, "thumbs": 1}  # no half-stored poison
    again = store.ingest(poisons)  # what a restart would read again
    assert (again.stored, again.invalid) == (0, 3)


def test_rounds_left_running_by_a_kill_are_marked_failed_and_their_feedback_counts_again(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    store.ingest(traffic(10))
    done = store.begin_round(store.feedback_seq())
    store.finish_round(done, "published", "", "v1", {})
    store.ingest(traffic(20, seed=1)[20:])
    assert store.count_feedback(store.last_round_seq()) == 10
    store.begin_round(store.feedback_seq())  # then the trainer is killed
    reopened = DatasetStore(tmp_path / "d.sqlite")
    assert reopened.abandon_running_rounds() == 1
    assert reopened.rounds(1)[0].outcome == "failed"
    assert reopened.count_feedback(reopened.last_round_seq()) == 10


def _rated(store, i: int, user: str, rating: str, version: str = "v1", pinned: bool = False) -> None:
    event = completion(i, random.Random(i), version=version, prefix="vote")
    event.user_id, event.pinned = user, pinned
    thumbs = feedback(event, rating)
    thumbs.user_id = user
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString()), (TOPIC_FEEDBACK, thumbs.SerializeToString())])


def test_the_roll_out_signal_counts_one_vote_per_user_and_leaves_pinned_answers_out(tmp_path):
    """One user thumbing up forty answers, or rating versions they pinned, decided a roll-out."""
    store = DatasetStore(tmp_path / "d.sqlite")
    for i in range(40):
        _rated(store, i, "eager", "up")  # one user, forty ups: one vote
    _rated(store, 100, "alice", "down")
    _rated(store, 101, "bob", "up")
    _rated(store, 102, "bob", "down")
    _rated(store, 103, "bob", "down")  # bob: net down
    for i in range(20):
        _rated(store, 200 + i, f"pinner-{i}", "up", pinned=True)  # pinned the version: not the roll-out's
    assert store.thumbs("v1", since=0) == (1, 2)


def test_a_dataset_from_before_pinned_completions_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "d.sqlite"
    store = DatasetStore(path)
    store.close()
    with sqlite3.connect(path) as db:  # the old schema: no pinned column
        db.execute("ALTER TABLE completions DROP COLUMN pinned")
    store = DatasetStore(path)
    _rated(store, 1, "alice", "up")
    assert store.thumbs("v1", since=0) == (1, 0)


def test_anonymous_users_can_be_left_out_of_the_roll_out_signal(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    _rated(store, 1, "alice", "up")
    for i in range(5):
        _rated(store, 10 + i, f"anon-{i:016x}", "down")  # anyone can mint these with a new Bearer string
    assert store.thumbs("v1", since=0) == (1, 5)
    assert store.thumbs("v1", since=0, anonymous=False) == (1, 0)


def test_a_correction_is_a_pair_over_the_answer_it_rewrote_and_the_latest_rewrite_stands(tmp_path):
    store = DatasetStore(tmp_path / "d.sqlite")
    rng = random.Random(0)
    events = [completion(i, rng) for i in range(3)]
    first = feedback(events[0], "correction", text="Please, a first try.")
    first.created_at.FromSeconds(first.created_at.seconds - 10)
    later = feedback(events[0], "correction", text="Thank you for asking, kindly put.")
    unchanged = feedback(events[1], "correction", text=events[1].choices[1 - polite_index(events[1])].text + "  ")
    waiting = feedback(completion(9, rng), "correction")  # its completion has not arrived
    store.ingest([(TOPIC_COMPLETIONS, e.SerializeToString()) for e in events]
                 + [(TOPIC_FEEDBACK, f.SerializeToString()) for f in (later, first, unchanged, waiting)])  # fmt: skip
    assert store.count_events()["correction"] == 4 and store.waiting_feedback() == 1
    rows = store.corrections()
    assert len(rows) == 2  # one per user and choice: the older rewrite, arriving after the newer, did not replace it
    assert (rows[0].original, rows[0].text) == (
        events[0].choices[1 - polite_index(events[0])].text,
        "Thank you for asking, kindly put.",
    )
    pairs = build_pairs([], [], [], {}, 0, rows)
    assert [(p.chosen, p.rejected, p.source) for p in pairs.train] == [
        ("Thank you for asking, kindly put.", rows[0].original, "correction")
    ]  # the rewrite that only added spaces gives no pair
    examples = kto_examples([], pairs.train, heldout=set())
    assert {(e.text, e.desirable) for e in examples} == {("Thank you for asking, kindly put.", True),
                                                         (rows[0].original, False)}  # fmt: skip
