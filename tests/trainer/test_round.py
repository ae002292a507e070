"""Whole rounds on a tiny policy: the hidden preference is learned, PPO follows it, gates refuse bad rounds.

The traffic hides one rule (polite answers beat curt ones); the policy writes both kinds.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from flywheel.channel import ADAPTER_KIND
from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from tests.trainer.conftest import round_context as context
from tests.trainer.synthetic import completion, feedback, traffic
from trainer import round as round_module
from trainer.candidates import candidates
from trainer.context import CANDIDATE_KEY, REWARD_MODEL_KEY
from trainer.evaluate import measure_policy
from trainer.ppo import PolicyLora, encode_prompts, load_policy
from trainer.reward import RewardModel, load_tokenizer
from trainer.round import run_round

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(taught_policy, tmp_path_factory):
    ctx, announced = context(tmp_path_factory.mktemp("round"), taught_policy, traffic(200))
    return ctx, run_round(ctx), announced


def test_the_reward_model_learns_the_hidden_preference(published):
    _, result, _ = published
    assert result.metrics["pairs_train"] > 100
    assert result.metrics["reward_accuracy"] >= 0.9


def test_ppo_raises_the_reward_on_held_out_prompts_over_the_previous_version(published):
    _, result, _ = published
    assert result.outcome == "published", result.reason
    assert result.metrics["eval_new_mean_reward"] > result.metrics["eval_parent_mean_reward"] + 0.5, result.metrics
    assert abs(result.metrics["ppo_logprob_gap"]) < 0.15  # rollout and training logprobs agree


def test_the_published_adapter_is_complete_loadable_and_changes_the_policy(published, taught_policy):
    ctx, result, announced = published
    manifest = ctx.policies.verify(result.version)
    assert manifest.parent == "base" and manifest.kind == ADAPTER_KIND
    assert manifest.metrics["eval_new_mean_reward"] == result.metrics["eval_new_mean_reward"]
    base = AutoModelForCausalLM.from_pretrained(taught_policy, dtype=torch.float32)
    before = {name: p.clone() for name, p in base.named_parameters()}
    tuned = PeftModel.from_pretrained(base, ctx.policies.path(result.version)).merge_and_unload()
    changed = [name for name, p in tuned.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "the adapter left every weight as it was"
    (event,) = announced
    assert event.version == result.version
    assert {(f.path, f.sha256) for f in event.files} == {(f.path, f.sha256) for f in manifest.files}


def test_the_round_records_its_phases_and_feedback_latency(published):
    ctx, result, _ = published
    for phase in ("collect", "reward_model", "ppo", "evaluate", "publish"):
        assert result.metrics[f"seconds_{phase}"] >= 0
    assert 0 < result.metrics["feedback_to_policy_seconds"] < 3600
    (record,) = ctx.dataset.rounds()
    assert (record.outcome, record.version) == ("published", result.version)


def test_a_reward_model_that_cannot_rank_is_refused_and_nothing_is_published(taught_policy, tmp_path):
    ctx, announced = context(tmp_path, taught_policy, _contradicting(120))
    result = run_round(ctx)
    assert result.outcome == "gate_failed"
    assert "below the floor" in result.reason
    assert ctx.policies.versions() == [] and announced == []
    assert ctx.metrics.gates.labels("reward_model", "fail")._value.get() == 1


def _contradicting(count: int) -> list[tuple[str, bytes]]:
    """Comparisons that prefer the polite or the curt answer at random: there is no rule to learn."""
    rng = random.Random(2)
    records = []
    for i in range(count):
        event = completion(i, rng)
        fb = feedback(event, "comparison")
        if rng.random() < 0.5:
            fb.comparison.ranking[:] = list(reversed(fb.comparison.ranking))
        records.append((TOPIC_COMPLETIONS, event.SerializeToString()))
        records.append((TOPIC_FEEDBACK, fb.SerializeToString()))
    return records


def test_a_runaway_ppo_round_is_refused_by_the_policy_gate(taught_policy, tmp_path):
    ctx, announced = context(
        tmp_path, taught_policy, traffic(200), ppo={"learning_rate": 0.5, "kl_coef": 0.0}, gates={"kl_budget": 2.0}
    )
    result = run_round(ctx)
    assert result.outcome == "gate_failed", result
    assert "KL" in result.reason or "did not rise" in result.reason or "length" in result.reason
    assert ctx.policies.versions() == [] and announced == []


def test_a_round_ahead_but_not_clearly_is_continued_by_the_next_and_the_reward_model_goes_on(
    taught_policy, tmp_path, monkeypatch
):
    # No gain can clear a million standard errors: every round is refused on the gain alone.
    ctx, announced = context(tmp_path, taught_policy, traffic(150), gates={"min_gain_stderrs": 1e6})
    starts = []
    real_ppo = round_module.run_ppo
    monkeypatch.setattr(round_module, "run_ppo", lambda model, start, *a, **k: starts.append(start)
                        or real_ppo(model, start, *a, **k))  # fmt: skip

    first = run_round(ctx)
    assert first.outcome == "gate_failed" and "did not rise beyond noise" in first.reason, first
    assert first.metrics["eval_reward_gain"] > 0, first.metrics
    (kept,) = candidates(ctx).versions()
    assert ctx.dataset.get_state(CANDIDATE_KEY) == kept.version and kept.parent == "base"
    first_rm = ctx.dataset.get_state(REWARD_MODEL_KEY)
    assert first.metrics["reward_continued"] == 0 and first.metrics["reward_pairs"] == first.metrics["pairs_train"]

    ctx.dataset.ingest(traffic(45, seed=1))
    second = run_round(ctx)
    # The reward model continued on the 30-odd new pairs and as many replayed ones, not on all of them.
    assert second.metrics["reward_continued"] == 1, second.metrics
    assert second.metrics["reward_pairs"] < 0.6 * second.metrics["pairs_train"], second.metrics
    assert second.metrics["reward_accuracy"] >= 0.9
    if "reward_model_kept" not in second.metrics:
        assert ctx.reward_models.manifest(ctx.dataset.get_state(REWARD_MODEL_KEY)).parent == first_rm
    # PPO went on from the kept policy, not from the base again.
    assert starts == [None, candidates(ctx).path(kept.version)]
    assert second.metrics["candidate_rounds"] == 2

    ctx.settings.gates.min_gain_stderrs = 0.0
    third = run_round(ctx)  # no new feedback: the reward model stays as it is
    if "reward_model_kept" not in second.metrics:
        assert "reward_continued" not in third.metrics, third.metrics
    assert third.outcome == "published", third
    assert third.metrics["candidate_rounds"] == 3
    assert ctx.policies.manifest(third.version).parent == "base"
    assert candidates(ctx).versions() == [] and ctx.dataset.get_state(CANDIDATE_KEY) == ""
    assert [e.version for e in announced] == [third.version]


def test_the_evaluation_scores_a_cut_answer_as_ppo_does_less_the_missing_eos_penalty(taught_policy):
    tokenizer = load_tokenizer(str(taught_policy))
    classifier = AutoModelForSequenceClassification.from_pretrained(taught_policy, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardModel(classifier, tokenizer, 64)
    policy = load_policy(str(taught_policy), None, PolicyLora(4), trainable=False)
    prompts = [(("user", "Could you help me, please?"),), (("user", "Tell me about the weather."),)]
    queries = encode_prompts(tokenizer, prompts, 10**9)
    args = (policy, tokenizer, reward, queries, 3, 1.0, 4, 0)  # 3 tokens: most answers are cut
    plain, penalised = measure_policy(*args), measure_policy(*args, missing_eos_penalty=1.0)
    assert plain.ended < 1.0
    assert penalised.mean_reward == pytest.approx(plain.mean_reward - (1.0 - plain.ended), abs=1e-4)
    assert penalised.ended == plain.ended and penalised.mean_length == plain.mean_length
