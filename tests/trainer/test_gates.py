"""The gates a round must pass: pure functions of measured numbers, checked against values worked by hand."""

import math

import pytest

from flywheel.settings import GateSection, RewardSection
from trainer.evaluate import PolicyMeasure, policy_gate, reward_gain, reward_model_gate

GATES = GateSection(min_reward_gain=0.0, min_gain_stderrs=2.0, kl_budget=5.0, length_band=2.0, min_length_ratio=0.125)
PARENT = PolicyMeasure((1.0, 1.0, 1.0, 1.0), 1.0, 28)
REFERENCE = PolicyMeasure((0.5, 0.5, 0.5, 0.5), 0.0, 40)


def test_reward_model_gate_wants_the_floor_and_no_regression():
    config = RewardSection(accuracy_floor=0.6, accuracy_tolerance_stderrs=0.0)  # no tolerance: the plain rules
    eight_of_ten, seven_of_ten = [1.0] * 8 + [0.0] * 2, [1.0] * 7 + [0.0] * 3
    assert reward_model_gate(eight_of_ten, seven_of_ten, config) == ""
    assert "below the floor" in reward_model_gate([1.0] * 5 + [0.0] * 5, None, config)
    assert "fell below the previous" in reward_model_gate(seven_of_ten, eight_of_ten, config)
    assert "no held-out pairs" in reward_model_gate([], None, config)


def test_the_floor_allows_the_noise_of_few_pairs_and_less_of_many():
    config = RewardSection(accuracy_floor=0.6, accuracy_tolerance_stderrs=1.64)
    # 10 of 17 (0.588, the learning run's refused first model): tolerance 1.64 * sqrt(0.24 / 17) = 0.195
    assert reward_model_gate([1.0] * 10 + [0.0] * 7, None, config) == ""
    # 6 of 17 (0.35) is still below 0.6 - 0.195
    assert "below the floor" in reward_model_gate([1.0] * 6 + [0.0] * 11, None, config)
    # 0.565 on 120 pairs (the HH model refused by the strict floor): tolerance 0.073, passes
    assert reward_model_gate([1.0] * 68 + [0.0] * 52, None, config) == ""
    # 0.52 on 1,000 pairs: tolerance 0.025, refused
    assert "below the floor" in reward_model_gate([1.0] * 520 + [0.0] * 480, None, config)


def test_the_previous_model_rule_is_a_paired_test_on_the_same_pairs():
    config = RewardSection(accuracy_floor=0.0, accuracy_tolerance_stderrs=1.64)  # the floor out of the way
    previous = [1.0] * 14 + [0.0] * 6  # 0.70 on 20 pairs
    one_flip = [1.0] * 13 + [0.0] * 7  # 0.65: one pair lost, the rest the same
    assert reward_model_gate(one_flip, previous, config) == ""  # a drop of 0.05 is within noise
    much_worse = [0.0] * 8 + [1.0] * 6 + [0.0] * 6  # 0.30: eight pairs lost, none won
    assert "fell below the previous" in reward_model_gate(much_worse, previous, config)
    # the same accuracies unpaired would say little; paired, the differences are consistent
    assert "by more than noise" in reward_model_gate(much_worse, previous, config)


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


def test_a_negative_margin_publishes_a_policy_unless_it_is_clearly_worse():
    lenient = GATES.model_copy(update={"min_reward_gain": -1000.0, "min_gain_stderrs": -2.0})
    slightly_worse = PolicyMeasure((0.9, 1.2, 0.9, 0.8), 2.0, 30)  # gains -0.1, +0.2, -0.1, -0.2
    assert policy_gate(slightly_worse, PARENT, REFERENCE, lenient) == []
    assert len(policy_gate(slightly_worse, PARENT, REFERENCE, GATES)) == 1
    clearly_worse = PolicyMeasure((0.0, 0.1, -0.1, 0.05), 2.0, 30)  # about 1.0 worse on every prompt
    (reason,) = policy_gate(clearly_worse, PARENT, REFERENCE, lenient)
    assert "did not rise beyond noise" in reason
    assert len(policy_gate(PARENT, PARENT, REFERENCE, lenient)) == 1  # an unchanged policy is not news


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


def test_a_fresh_reward_model_takes_its_epochs_or_at_least_its_minimum_of_steps():
    from trainer.reward_update import fresh_epochs

    config = RewardSection(epochs=1.0, min_steps=12, batch_size=8)
    assert fresh_epochs(config, 1000) == 1.0  # 125 steps
    assert fresh_epochs(config, 48) == 2.0  # one epoch would be 6 steps
    assert fresh_epochs(RewardSection(epochs=1.0, min_steps=0), 10) == 1.0


def test_pairs_that_share_an_answer_count_as_one_judgement():
    config = RewardSection(accuracy_floor=0.6, accuracy_tolerance_stderrs=1.64)
    # 30 held-out pairs, 8 right (0.27): as 30 independent pairs it is far below the floor...
    result = [1.0] * 8 + [0.0] * 22
    assert "below the floor" in reward_model_gate(result, None, config)
    # ...but as three thumbs up each paired with ten thumbs down it is three judgements, and 0.27
    # is well inside what three coin flips give (tolerance 1.64 * sqrt(0.24 / 3) = 0.46)
    three_groups = [0] * 8 + [1] * 10 + [2] * 12
    assert reward_model_gate(result, None, config, three_groups) == ""
    # the paired rule clusters too: one group of ten lost against the predecessor
    previous = [1.0] * 20 + [0.0] * 10
    lost_one_group = [1.0] * 10 + [0.0] * 20
    assert "fell below" in reward_model_gate(lost_one_group, previous, RewardSection(accuracy_floor=0.0))
    groups = [0] * 10 + [1] * 10 + [2] * 10
    assert reward_model_gate(lost_one_group, previous, RewardSection(accuracy_floor=0.0), groups) == ""


def test_answer_groups_join_pairs_through_shared_answers():
    from trainer.pairs import Pair, answer_groups, effective_count

    def pair(prompt, chosen, rejected):
        return Pair(prompt, (("user", prompt),), chosen, rejected, "thumbs", 0)

    pairs = [pair("p", "up", "d1"), pair("p", "up", "d2"), pair("p", "up2", "d2"),  # one group via d2
             pair("q", "up", "d1"),  # another prompt: the same text is another answer
             pair("p", "x", "y")]  # fmt: skip
    groups = answer_groups(pairs)
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4]}) == 3
    assert effective_count(groups) == 25 / (9 + 1 + 1)
    assert effective_count(list(range(7))) == 7
    assert effective_count([]) == 0.0
