"""DPO rounds (`algorithm=dpo`) on the tiny policy: the pairs move the policy, the gates still decide.

The traffic hides one rule (polite answers beat curt ones); the policy writes both kinds.
"""

from __future__ import annotations

import pytest
from kafka.errors import KafkaError

from flywheel.settings import DPOSection
from tests.trainer.conftest import round_context as context
from tests.trainer.synthetic import traffic
from trainer import round as round_module
from trainer.dpo import dpo_rows, offline_steps
from trainer.pairs import Pair
from trainer.reward import dialogue_ids, load_tokenizer
from trainer.round import run_round

DPO = {"learning_rate": 2e-3, "beta": 0.1, "epochs": 2, "batch_size": 8, "max_length": 128}


def test_a_dpo_row_tokenizes_as_the_reward_model_and_serving_read_a_dialogue(taught_policy):
    tokenizer = load_tokenizer(str(taught_policy))
    pair = Pair("k", (("user", "Could you help me, please?"),), "Of course, gladly.", "No.", "comparison", 1)
    (row,) = dpo_rows(tokenizer, [pair])
    prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
    chosen = tokenizer.encode(row["prompt"] + row["chosen"], add_special_tokens=False)
    assert chosen == dialogue_ids(tokenizer, pair.messages, pair.chosen, 10**6)
    assert chosen[: len(prompt)] == prompt and chosen[-1] == tokenizer.eos_token_id


def test_offline_steps_cover_the_epochs_and_at_least_the_minimum():
    config = DPOSection(epochs=2, min_steps=12, batch_size=8)
    assert offline_steps(config, 200) == (2, 50)
    epochs, steps = offline_steps(config, 20)  # 3 batches an epoch: 12 steps take 4 epochs
    assert (epochs, steps) == (4, 12)


def broker_down(manifest) -> None:
    raise KafkaError("the broker is away")


@pytest.mark.slow
def test_a_dpo_round_publishes_a_policy_that_follows_the_pairs_and_the_next_continues_on_new_ones(
    taught_policy, tmp_path, monkeypatch
):
    ctx, announced = context(tmp_path, taught_policy, traffic(200), algorithm="dpo", dpo=DPO)
    trained_on = []
    real = round_module.run_dpo
    monkeypatch.setattr(round_module, "run_dpo", lambda model, start, pairs, *a, **k: trained_on.append(
        (start, len(pairs))) or real(model, start, pairs, *a, **k))  # fmt: skip
    ppo_calls = []
    monkeypatch.setattr(round_module, "run_ppo", lambda *a, **k: ppo_calls.append(a))

    first = run_round(ctx)
    assert first.outcome == "published", first.reason
    assert ppo_calls == []  # the policy was trained by DPO alone
    assert first.metrics["eval_new_mean_reward"] > first.metrics["eval_parent_mean_reward"] + 0.5, first.metrics
    assert first.metrics["dpo_loss_last"] < first.metrics["dpo_loss_first"]
    assert first.metrics["seconds_dpo"] > 0 and first.metrics["eval_new_mean_kl"] <= ctx.settings.gates.kl_budget
    manifest = ctx.policies.verify(first.version)
    assert [f.path for f in manifest.files if "ref" in f.path.split("/")] == []  # TRL's frozen copy is not shipped
    assert manifest.extra["trained_through_seq"] == max(p.seq for p in round_module.available_pairs(ctx, "base").train)
    assert trained_on == [(None, first.metrics["pairs_train"])]
    assert [e.version for e in announced] == [first.version]

    ctx.dataset.ingest(traffic(40, seed=3))
    # 40 new pairs on top of a published policy move it less: on an AVX2 CPU (float32) the gain came
    # out at 0.604 +- 0.309 (1.95 standard errors), on AVX-512 above 2. What this round checks is the
    # continuation and the late announcement, so its gate asks for a gain beyond one standard error.
    gates = ctx.settings.gates.model_copy(update={"min_gain_stderrs": 1.0})
    ctx.settings = ctx.settings.model_copy(update={"gates": gates})
    ctx.announce = broker_down  # the broker restarted under the round (UnknownProducerIdError, seen so)
    second = run_round(ctx)
    assert second.outcome == "published", second.reason  # not "failed": the version waits to be announced
    assert [e.version for e in announced] == [first.version] and ctx.policies.verify(second.version)
    start, pairs = trained_on[1]
    assert start == ctx.policies.path(first.version)  # DPO goes on from the published version
    new = second.metrics["pairs_train"] - first.metrics["pairs_train"]
    assert 0 < pairs <= 2 * new + 1 < second.metrics["pairs_train"], (pairs, new, second.metrics)
