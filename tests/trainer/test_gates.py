"""The gates a round must pass: pure functions of measured numbers, checked against values worked by hand."""

import math

import pytest

from flywheel.settings import GateSection, RewardSection
from trainer.evaluate import PolicyMeasure, policy_gate, reward_gain, reward_model_gate

GATES = GateSection(min_reward_gain=0.0, min_gain_stderrs=2.0, kl_budget=5.0, length_band=2.0, min_length_ratio=0.125)
PARENT = PolicyMeasure((1.0, 1.0, 1.0, 1.0), 1.0, 28)
REFERENCE = PolicyMeasure((0.5, 0.5, 0.5, 0.5), 0.0, 40)


def test_reward_model_gate_wants_the_floor_and_no_regression():
    config = RewardSection(accuracy_floor=0.6)
    assert reward_model_gate(0.8, 0.75, config) == ""
    assert "below the floor" in reward_model_gate(0.55, None, config)
    assert "fell below the previous" in reward_model_gate(0.7, 0.72, config)
    assert "no held-out pairs" in reward_model_gate(float("nan"), None, config)


def test_reward_gain_is_the_mean_per_prompt_difference_with_its_standard_error():
    # gains 0.2, 0.3, 0.1, 0.4: mean 0.25; sample variance (0.05² + 0.05² + 0.15² + 0.15²) / 3 = 0.05 / 3;
    # standard error sqrt(0.05 / 3 / 4) = 0.0645497
    gain, stderr = reward_gain(PolicyMeasure((1.2, 1.3, 1.1, 1.4), 0, 0), PARENT)
    assert gain == pytest.approx(0.25)
    assert stderr == pytest.approx(0.0645497, abs=1e-6)
    assert PolicyMeasure((1.2, 1.3, 1.1, 1.4), 0, 0).mean_reward == pytest.approx(1.25)


def test_policy_gate_passes_a_better_policy_within_budget():
    new = PolicyMeasure((1.2, 1.3, 1.1, 1.4), 2.0, 30)  # gain 0.25 > 2 * 0.0645
    assert policy_gate(new, PARENT, REFERENCE, GATES) == []


def test_a_gain_within_the_noise_is_refused():
    # gains 0.5, -0.4, 0.4, -0.3: mean 0.05 > 0, but the standard error is sqrt((0.45² + 0.45² + 0.35² + 0.35²) / 3 / 4)
    # = 0.2327, and 0.05 < 2 * 0.2327
    new = PolicyMeasure((1.5, 0.6, 1.4, 0.7), 2.0, 30)
    gain, stderr = reward_gain(new, PARENT)
    assert (gain, stderr) == (pytest.approx(0.05), pytest.approx(0.232737, abs=1e-6))
    (reason,) = policy_gate(new, PARENT, REFERENCE, GATES)
    assert "did not rise beyond noise" in reason
    assert policy_gate(new, PARENT, REFERENCE, GATES.model_copy(update={"min_gain_stderrs": 0.0})) == []


def test_one_prompt_has_no_spread_so_only_a_zero_noise_gate_passes_it():
    new, parent = PolicyMeasure((1.5,), 2.0, 30), PolicyMeasure((1.0,), 1.0, 28)
    gain, stderr = reward_gain(new, parent)
    assert gain == pytest.approx(0.5) and math.isnan(stderr)
    assert len(policy_gate(new, parent, REFERENCE, GATES)) == 1
    assert policy_gate(new, parent, REFERENCE, GATES.model_copy(update={"min_gain_stderrs": 0.0})) == []


def test_the_length_band_allows_concise_answers_but_not_blanks_or_rambling():
    # reference 40 tokens: the band is [40 * 0.125, 40 * 2] = [5, 80]
    better = (1.2, 1.3, 1.1, 1.4)
    assert policy_gate(PolicyMeasure(better, 2.0, 12), PARENT, REFERENCE, GATES) == []
    for length in (4.5, 81):
        (reason,) = policy_gate(PolicyMeasure(better, 2.0, length), PARENT, REFERENCE, GATES)
        assert "left the band [5.0, 80.0]" in reason


def test_policy_gate_refuses_a_degenerate_policy_with_every_reason():
    reasons = policy_gate(PolicyMeasure((0.9, 0.9, 0.9, 0.9), 12.0, 200), PARENT, REFERENCE, GATES)
    assert len(reasons) == 3
    assert "did not rise" in reasons[0] and "exceeds the budget" in reasons[1] and "left the band" in reasons[2]


def test_policy_gate_treats_nan_as_failure():
    nan = float("nan")
    assert len(policy_gate(PolicyMeasure((nan, nan, nan, nan), nan, nan), PARENT, REFERENCE, GATES)) == 3
    assert len(policy_gate(PolicyMeasure((), nan, nan), PolicyMeasure((), 1, 28), REFERENCE, GATES)) == 3
