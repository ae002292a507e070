"""The gates a round must pass: pure functions of measured numbers."""

from flywheel.settings import GateSection, RewardSection
from trainer.evaluate import PolicyMeasure, policy_gate, reward_model_gate

GATES = GateSection(min_reward_gain=0.0, kl_budget=5.0, length_band=2.0)


def test_reward_model_gate_wants_the_floor_and_no_regression():
    config = RewardSection(accuracy_floor=0.6)
    assert reward_model_gate(0.8, 0.75, config) == ""
    assert "below the floor" in reward_model_gate(0.55, None, config)
    assert "fell below the previous" in reward_model_gate(0.7, 0.72, config)
    assert "no held-out pairs" in reward_model_gate(float("nan"), None, config)


def test_policy_gate_passes_a_better_policy_within_budget():
    new, parent, reference = PolicyMeasure(1.2, 2.0, 30), PolicyMeasure(1.0, 1.0, 28), PolicyMeasure(0.5, 0.0, 25)
    assert policy_gate(new, parent, reference, GATES) == []


def test_policy_gate_refuses_a_degenerate_policy_with_every_reason():
    reasons = policy_gate(PolicyMeasure(0.9, 12.0, 200), PolicyMeasure(1.0, 1.0, 28), PolicyMeasure(0.5, 0, 25), GATES)
    assert len(reasons) == 3
    assert "did not rise" in reasons[0] and "exceeds the budget" in reasons[1] and "left the band" in reasons[2]


def test_policy_gate_treats_nan_as_failure():
    nan = float("nan")
    assert len(policy_gate(PolicyMeasure(nan, nan, nan), PolicyMeasure(1, 1, 28), PolicyMeasure(0, 0, 25), GATES)) == 3
