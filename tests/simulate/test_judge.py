"""Noisy judgments: flips at the configured rate, reproducible with a seed; ties stay ties."""

import random

import pytest

from flywheel.simulate.judge import judge_comparison, judge_thumbs, strength_of

DRAWS = 10_000


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3, 1.0])
def test_thumbs_flip_at_the_noise_rate(noise):
    rng = random.Random(1234)
    verdicts = [judge_thumbs(0.9, rng, noise) for _ in range(DRAWS)]
    flips = sum(v.flipped for v in verdicts)
    # binomial: mean DRAWS * noise, sd sqrt(DRAWS * noise * (1 - noise)) <= 50; allow 4 sd
    assert abs(flips - DRAWS * noise) <= 200
    assert all(v.satisfied for v in verdicts)
    assert all((v.rating == "down") == v.flipped for v in verdicts)


def test_thumbs_follow_the_threshold_without_noise():
    rng = random.Random(0)
    assert judge_thumbs(0.5, rng, 0.0).rating == "up"
    assert judge_thumbs(0.49, rng, 0.0).rating == "down"
    flipped = judge_thumbs(0.1, random.Random(0), 1.0)
    assert flipped.rating == "up" and flipped.flipped and not flipped.satisfied


def test_the_same_seed_gives_the_same_judgments():
    first = [judge_thumbs(0.7, random.Random(42), 0.25) for _ in range(5)]
    rng_a, rng_b = random.Random(42), random.Random(42)
    assert [judge_thumbs(0.7, rng_a, 0.25) for _ in range(500)] == [judge_thumbs(0.7, rng_b, 0.25) for _ in range(500)]
    assert len({v.flipped for v in first}) == 1  # each a fresh Random(42): the same first draw
    # with seed 42, random() starts 0.639, 0.025, 0.275: only the second is under 0.25
    rng = random.Random(42)
    assert [judge_thumbs(0.7, rng, 0.25).flipped for _ in range(3)] == [False, True, False]


def test_comparisons_prefer_the_higher_score_and_flip_at_the_noise_rate():
    rng = random.Random(99)
    verdicts = [judge_comparison((0.2, 0.9), rng, 0.2) for _ in range(DRAWS)]
    flips = sum(v.flipped for v in verdicts)
    assert abs(flips - DRAWS * 0.2) <= 160  # sd 40
    for v in verdicts:
        assert (v.preferred, v.rejected) == ((0, 1) if v.flipped else (1, 0))
        assert v.strength == "much_better" and not v.tie


def test_equal_scores_are_a_tie_whatever_the_noise():
    rng = random.Random(5)
    verdicts = [judge_comparison((0.5, 0.5), rng, 0.5) for _ in range(200)]
    assert all(v.tie and not v.flipped and (v.preferred, v.rejected) == (0, 1) for v in verdicts)


def test_strength_follows_the_score_gap():
    assert strength_of(0.05) == "slightly_better"
    assert strength_of(0.2) == "better"
    assert strength_of(0.6) == "much_better"
    assert judge_comparison((0.6, 0.5), random.Random(0), 0.0).strength == "slightly_better"
