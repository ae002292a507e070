"""Rater reliability: users who answer against the rest are found by the reward model and left out.

Synthetic traffic (polite answers beat curt ones) from 8 users, of whom a quarter answer against
the preference: every comparison reversed, every thumb the other way.
"""

from __future__ import annotations

import random

import pytest

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.v1 import events_pb2
from tests.trainer.conftest import round_context
from tests.trainer.synthetic import completion, feedback
from trainer.dataset import DatasetStore
from trainer.raters import assess, include_everyone, wilson_upper
from trainer.round import available_pairs, run_round

USERS = [f"rater-{i}" for i in range(8)]
CONTRARIANS = {"rater-0", "rater-1"}


def raters_traffic(count: int, seed: int = 0, contrarians: set[str] = CONTRARIANS) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        event = completion(i, rng, prefix=f"raters-s{seed}")
        event.user_id = USERS[i % len(USERS)]
        fb = feedback(event, ("comparison", "up", "down")[i // len(USERS) % 3])
        if event.user_id in contrarians:
            if fb.HasField("comparison"):
                fb.comparison.ranking.reverse()
            else:
                up = fb.thumbs.rating == events_pb2.RATING_UP
                fb.thumbs.rating = events_pb2.RATING_DOWN if up else events_pb2.RATING_UP
        records += [(TOPIC_COMPLETIONS, event.SerializeToString()), (TOPIC_FEEDBACK, fb.SerializeToString())]
    return records


def test_the_wilson_bound_tells_a_contrarian_from_chance():
    assert wilson_upper(2, 20, 3.0) < 0.5 < wilson_upper(8, 20, 3.0)  # 10 % agreement, 40 % agreement
    assert wilson_upper(0, 3, 3.0) > 0.5, "three judgements tell nothing"
    assert wilson_upper(0, 0, 3.0) == 1.0


def test_each_user_judges_with_comparisons_and_their_own_ups_against_downs(tmp_path):
    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest(raters_traffic(96, contrarians=set()))
    judgements = store.rater_judgements(per_user=100)
    assert set(judgements) == set(USERS)
    for items in judgements.values():  # 12 each: 4 comparisons, 4 ups, 4 downs -> 4 + 4 judgements
        assert len(items) == 8
        assert all("please" in j.better.lower() and "please" not in j.worse.lower() for j in items)
    assert all(len(items) == 3 for items in store.rater_judgements(per_user=3).values())

    same = completion(10_000, random.Random(1), prefix="same")  # two equal answers: nothing to judge them by
    same.user_id = "rater-same"
    same.choices[1].text = same.choices[0].text
    fb = feedback(same, "comparison")
    store.ingest([(TOPIC_COMPLETIONS, same.SerializeToString()), (TOPIC_FEEDBACK, fb.SerializeToString())])
    assert "rater-same" not in store.rater_judgements(per_user=100)


@pytest.mark.slow
def test_contrarian_raters_are_left_out_and_the_reward_models_accuracy_recovers(taught_policy, tmp_path):
    ctx, _ = round_context(tmp_path, taught_policy, raters_traffic(480),
                           reward={"accuracy_floor": 0.5, "epochs": 2})  # fmt: skip
    first = run_round(ctx, reward_only=True)  # no reward model yet: nobody can be assessed
    assert first.outcome == "reward_updated" and "raters_assessed" not in first.metrics, first
    assert first.metrics["reward_accuracy"] < 0.9, "a quarter of the held-out pairs are reversed"

    second = run_round(ctx, reward_only=True)
    rows = {user: (agreement, excluded) for user, _, agreement, excluded in ctx.dataset.raters()}
    assert {user for user, (_, excluded) in rows.items() if excluded} == CONTRARIANS, rows
    assert all(rows[user][0] < 0.3 for user in CONTRARIANS) and all(
        rows[user][0] > 0.7 for user in set(USERS) - CONTRARIANS
    ), rows  # fmt: skip
    assert second.metrics["raters_excluded"] == 2 and second.metrics["reward_continued"] == 0.0, second.metrics
    assert second.outcome == "reward_updated" and second.metrics["reward_accuracy"] >= 0.95, second
    pairs = available_pairs(ctx, "base")
    assert all("please" in p.chosen.lower() for p in [*pairs.train, *pairs.heldout])

    ctx.settings.raters.mode = "off"  # everyone counts again
    assert include_everyone(ctx.dataset) and not any(excluded for *_, excluded in ctx.dataset.raters())
    assert len(available_pairs(ctx, "base")) > len(pairs)


def test_assessment_in_off_mode_leaves_nobody_out(tmp_path):
    from flywheel.training_settings import RatersSection

    class Opposite:  # a reward model that prefers curt answers: everyone but the contrarians disagrees
        @staticmethod
        def score(messages, answers):
            return [0.0 if "please" in a.lower() else 1.0 for a in answers]

    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest(raters_traffic(240))
    report = assess(store, Opposite(), RatersSection(mode="off"))
    assert len(report.raters) == 8 and report.excluded == []
    report = assess(store, Opposite(), RatersSection())
    assert set(report.excluded) == set(USERS) - CONTRARIANS


def test_a_left_out_rater_counts_in_no_roll_out_signal_and_starts_no_round(tmp_path):
    store = DatasetStore(tmp_path / "dataset.sqlite")
    rng, records = random.Random(0), []
    for i in range(48):  # every user likes 6 answers of v0001: 8 votes up
        event = completion(i, rng, version="v0001", prefix="left-out")
        event.user_id = USERS[i % len(USERS)]
        records += [(TOPIC_COMPLETIONS, event.SerializeToString()),
                    (TOPIC_FEEDBACK, feedback(event, "up").SerializeToString())]  # fmt: skip
    store.ingest(records)
    assert store.thumbs("v0001", since=0.0) == (8, 0) and store.count_feedback() == 48

    store.save_raters([(user, 12, 0.1 if user in CONTRARIANS else 0.9, user in CONTRARIANS) for user in USERS])
    assert store.thumbs("v0001", since=0.0) == (6, 0), "a left-out user is no vote"
    assert store.count_feedback() == 36, "their 12 events start no round"
