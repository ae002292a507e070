"""KTO rounds (`algorithm=kto`) on the tiny policy: single rated answers move the policy, the gates still decide.

The traffic hides one rule (polite answers beat curt ones); the policy writes both kinds.
"""

from __future__ import annotations

import pytest

from flywheel.channel import ADAPTER_KIND
from flywheel.store import Manifest
from tests.trainer.conftest import round_context as context
from tests.trainer.synthetic import traffic
from trainer import round as round_module
from trainer.kto import Example, balanced_weights, kto_examples, kto_rows
from trainer.pairs import Pair
from trainer.records import RatedResponse
from trainer.reward import dialogue_ids, load_tokenizer
from trainer.round import run_round, trained_through

KTO = {"learning_rate": 2e-3, "beta": 0.1, "epochs": 2, "batch_size": 8, "max_length": 128}
ASK = (("user", "Could you help me, please?"),)


def rated(key: str, text: str, net: int, seq: int) -> RatedResponse:
    return RatedResponse(key, ASK, f"cmpl-{seq}", 0, text, net, seq)


def test_thumbs_are_examples_as_they_are_and_real_pairs_give_one_of_each():
    responses = [rated("a", "Gladly!", 1, 1), rated("b", "No.", -2, 2), rated("c", "Meh.", 0, 3),
                 rated("held", "Sure.", 1, 4)]  # fmt: skip
    pairs = [
        Pair("d", ASK, "Of course.", "Go away.", "comparison", 5),
        Pair("e", ASK, "Yes, kindly.", "Whatever.", "external", 6),
        Pair("a", ASK, "Gladly!", "a sample nobody rated", "thumbs_vs_sample", 1),  # its thumb is already there
        Pair("held", ASK, "Sure.", "Nope.", "comparison", 7),
    ]
    examples = kto_examples(responses, pairs, heldout={"held"})
    assert [(e.prompt_key, e.text, e.desirable) for e in examples] == [
        ("a", "Gladly!", True),
        ("b", "No.", False),  # a net thumbs down; the unrated (net 0) answer gives nothing
        ("d", "Of course.", True), ("d", "Go away.", False),
        ("e", "Yes, kindly.", True), ("e", "Whatever.", False),
    ]  # fmt: skip


def test_the_rarer_verdict_is_weighted_up_to_the_other():
    def examples(up: int, down: int) -> list[Example]:
        return [Example("k", ASK, str(i), i < up, i) for i in range(up + down)]

    assert balanced_weights(examples(2, 6)) == (3.0, 1.0)
    assert balanced_weights(examples(9, 3)) == (1.0, 3.0)
    assert balanced_weights(examples(4, 0)) == (1.0, 1.0)


def test_a_kto_row_tokenizes_as_the_reward_model_reads_a_dialogue_and_rows_are_shuffled(taught_policy):
    tokenizer = load_tokenizer(str(taught_policy))
    examples = [Example(f"k{i}", ASK, f"Answer {i}.", i % 2 == 0, i) for i in range(16)]
    rows = kto_rows(tokenizer, examples, seed=0)
    assert rows == kto_rows(tokenizer, examples, seed=0)  # the order is seeded
    assert [row["completion"] for row in rows] != [row["completion"] for row in kto_rows(tokenizer, examples, 1)]
    labels = [row["label"] for row in rows]
    assert labels != [True, False] * 8 and sum(labels) == 8
    row = next(r for r in rows if r["completion"].startswith("Answer 3."))
    ids = tokenizer.encode(row["prompt"] + row["completion"], add_special_tokens=False)
    assert ids == dialogue_ids(tokenizer, ASK, "Answer 3.", 10**6) and row["label"] is False


def test_a_policy_continues_on_new_feedback_only_from_its_own_algorithm():
    def manifest(extra: dict) -> Manifest:
        return Manifest("v1", "base", "m", ADAPTER_KIND, 0.0, extra=extra)

    assert trained_through(manifest({"algorithm": "kto", "trained_through_seq": 40}), "kto") == 40
    assert trained_through(manifest({"algorithm": "dpo", "trained_through_seq": 40}), "kto") == -1
    assert trained_through(manifest({"trained_through_seq": 40}), "dpo") == 40  # recorded before the algorithm was
    assert trained_through(manifest({"algorithm": "ppo"}), "kto") == -1
    assert trained_through(None, "kto") == -1


@pytest.mark.slow
def test_a_kto_round_after_a_supervised_phase_on_corrections_publishes_a_policy_that_follows_the_thumbs(
    taught_policy, tmp_path, monkeypatch
):
    sft = {"min_demonstrations": 8, "learning_rate": 2e-3, "epochs": 1, "max_length": 128}
    ctx, announced = context(tmp_path, taught_policy, traffic(200, corrections=24), algorithm="kto", kto=KTO, sft=sft)
    trained_on: list[list[Example]] = []
    starts = []
    real = round_module.run_kto
    monkeypatch.setattr(round_module, "run_kto", lambda model, start, examples, *a, **k: trained_on.append(
        examples) or starts.append(start) or real(model, start, examples, *a, **k))  # fmt: skip
    demonstrated = []
    real_sft = round_module.run_sft
    monkeypatch.setattr(round_module, "run_sft", lambda model, start, demos, *a, **k: demonstrated.append(
        (start, demos)) or real_sft(model, start, demos, *a, **k))  # fmt: skip
    others = []
    monkeypatch.setattr(round_module, "run_ppo", lambda *a, **k: others.append(a))
    monkeypatch.setattr(round_module, "run_dpo", lambda *a, **k: others.append(a))

    result = run_round(ctx)
    assert result.outcome == "published", result.reason
    assert others == []  # the policy was trained by KTO alone
    assert result.metrics["eval_new_mean_reward"] > result.metrics["eval_parent_mean_reward"] + 0.5, result.metrics
    assert result.metrics["kto_loss_last"] < result.metrics["kto_loss_first"]
    # The supervised phase ran first, on the rewrites of training prompts, and KTO went on from its adapter.
    ((sft_start, demos),) = demonstrated
    heldout = round_module.heldout_slice(ctx.dataset, ctx.settings)
    assert sft_start is None and 8 <= len(demos) <= 24 and all(d.prompt_key not in heldout for d in demos)
    assert all("please" in d.text.lower() or "thank" in d.text.lower() for d in demos)
    assert starts == [ctx.settings.work_dir / f"round-{result.round}" / "sft" / "adapter"]
    assert result.metrics["sft_loss_last"] < result.metrics["sft_loss_first"] and result.metrics["seconds_sft"] > 0
    assert result.metrics["eval_new_mean_kl"] <= ctx.settings.gates.kl_budget
    (examples,) = trained_on
    # Thumbs up and down (two of every three events) and both sides of the comparisons, none held out.
    assert result.metrics["kto_desirable"] > 0 and result.metrics["kto_undesirable"] > 0
    thumbs = {r.seq for r in ctx.dataset.rated_responses() if r.prompt_key not in heldout}
    assert thumbs and thumbs <= {e.seq for e in examples}
    assert all(e.prompt_key not in heldout for e in examples)
    manifest = ctx.policies.verify(result.version)
    assert manifest.extra["algorithm"] == "kto"
    assert manifest.extra["trained_through_seq"] == max(e.seq for e in examples)
    assert manifest.extra["sft_through_seq"] == max(d.seq for d in demos)
    assert [f.path for f in manifest.files if "ref" in f.path.split("/")] == []  # TRL's frozen copy is not shipped
    assert [e.version for e in announced] == [result.version]
