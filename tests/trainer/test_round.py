"""Whole rounds on a tiny policy: the hidden preference is learned, PPO follows it, gates refuse bad rounds.

The traffic hides one rule (polite answers beat curt ones); the policy writes both kinds.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2
from tests.trainer.conftest import fast_settings
from tests.trainer.synthetic import completion, feedback, traffic
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics
from trainer.round import RoundContext, run_round

pytestmark = pytest.mark.slow


def context(tmp_path, model, records, **overrides) -> tuple[RoundContext, list]:
    settings = fast_settings(tmp_path / "data", **overrides)
    store = DatasetStore(settings.dataset_path)
    store.ingest(records)
    announced: list[events_pb2.PolicyPublished] = []
    ctx = RoundContext(
        settings, str(model), store, ModelStore(settings.store_dir), ModelStore(settings.reward_store_dir),
        announced.append, TrainerMetrics(),
    )  # fmt: skip
    return ctx, announced


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
    assert manifest.parent == "base" and manifest.kind == "lora"
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
