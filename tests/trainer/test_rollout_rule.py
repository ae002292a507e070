"""The roll-out decision rule, against values computed by hand."""

from __future__ import annotations

import math
import random

import pytest

from flywheel.settings import RolloutSection
from flywheel.v1 import events_pb2
from trainer.rollout import judge, probability_above_half, probability_b_beats_a

Action = events_pb2.RolloutAction
RULE = RolloutSection(min_samples=10, min_comparisons=10, promote_probability=0.95, rollback_probability=0.05,
                      max_samples=100)  # fmt: skip


def test_probability_matches_closed_forms():
    # No data: two uniform rates, either is as likely to be larger.
    assert probability_b_beats_a(0, 0, 0, 0) == pytest.approx(0.5)
    # b ~ Beta(2, 1) (density 2x) against a uniform: ∫ 2x · x dx = 2/3.
    assert probability_b_beats_a(0, 0, 1, 0) == pytest.approx(2 / 3)
    # a ~ Beta(1, 2) (density 2(1 - x)) against a uniform b: P(b > a) = ∫ 2(1 - x)(1 - x) dx = 2/3.
    assert probability_b_beats_a(0, 1, 0, 0) == pytest.approx(2 / 3)


def test_probability_is_complementary_and_agrees_with_sampling():
    for counts in [(3, 7, 8, 2), (20, 20, 25, 15), (0, 5, 5, 0)]:
        p = probability_b_beats_a(*counts)
        up_a, down_a, up_b, down_b = counts
        assert p + probability_b_beats_a(up_b, down_b, up_a, down_a) == pytest.approx(1.0)
        rng = random.Random(0)
        draws = 40_000
        wins = sum(rng.betavariate(1 + up_b, 1 + down_b) > rng.betavariate(1 + up_a, 1 + down_a) for _ in range(draws))
        assert p == pytest.approx(wins / draws, abs=4 * math.sqrt(0.25 / draws))


def test_no_decision_before_the_minimum_sample_on_both_sides():
    verdict = judge(canary=(9, 0), stable=(0, 30), rule=RULE)
    assert verdict.action == Action.ROLLOUT_ACTION_UNSPECIFIED
    assert "waiting for 10 thumbs" in verdict.reason


def test_a_clearly_better_canary_is_promoted_and_a_worse_one_rolled_back():
    better = judge(canary=(9, 1), stable=(3, 7), rule=RULE)
    assert better.action == Action.ROLLOUT_ACTION_PROMOTE and better.statistics["p_canary_better"] > 0.95
    worse = judge(canary=(2, 8), stable=(8, 2), rule=RULE)
    assert worse.action == Action.ROLLOUT_ACTION_ROLLBACK and worse.statistics["p_canary_better"] < 0.05


def test_an_undecided_canary_waits_then_is_rolled_back_at_the_cap():
    assert judge(canary=(6, 4), stable=(5, 5), rule=RULE).action == Action.ROLLOUT_ACTION_UNSPECIFIED
    capped = judge(canary=(50, 50), stable=(50, 50), rule=RULE)
    assert capped.action == Action.ROLLOUT_ACTION_ROLLBACK and "no clear gain" in capped.reason


def test_head_to_head_probability_is_a_binomial_tail():
    assert probability_above_half(0, 0) == pytest.approx(0.5)
    assert probability_above_half(1, 0) == pytest.approx(0.75)  # density 2θ: 1 - 1/4
    assert probability_above_half(0, 1) == pytest.approx(0.25)
    assert probability_above_half(7, 3) + probability_above_half(3, 7) == pytest.approx(1.0)


def test_head_to_head_comparisons_decide_alone_and_a_disagreement_waits():
    few_thumbs = ((1, 0), (0, 1))
    wins = judge(*few_thumbs, rule=RULE, head_to_head=(10, 1))
    assert wins.action == Action.ROLLOUT_ACTION_PROMOTE and wins.statistics["p_canary_wins"] > 0.95
    losses = judge(*few_thumbs, rule=RULE, head_to_head=(1, 10))
    assert losses.action == Action.ROLLOUT_ACTION_ROLLBACK
    assert judge(*few_thumbs, rule=RULE, head_to_head=(6, 3)).action == Action.ROLLOUT_ACTION_UNSPECIFIED
    disagree = judge(canary=(2, 8), stable=(8, 2), rule=RULE, head_to_head=(10, 1))
    assert disagree.action == Action.ROLLOUT_ACTION_UNSPECIFIED and "disagree" in disagree.reason
