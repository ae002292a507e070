"""GRPO rounds (`algorithm=grpo`) on the tiny policy: groups of answers scored by the reward model
move the policy without a critic; the reference is the base; the gates still decide.

The traffic hides one rule (polite answers beat curt ones); the policy writes both kinds.
"""

from __future__ import annotations

import pytest

from tests.trainer.conftest import round_context as context
from tests.trainer.synthetic import traffic
from trainer import round as round_module
from trainer.grpo import as_trl_reads_it
from trainer.reward import end_of_turn_scores, load_tokenizer, prompt_text
from trainer.round import run_round

GRPO = {"steps": 8, "prompts_per_step": 4, "group_size": 4, "response_length": 24, "learning_rate": 1e-3,
        "temperature": 1.0}  # fmt: skip


class Lengths:
    """A reward model stand-in (score_ids is what GRPO calls): the score is the sequence's length."""

    max_length = 10

    @staticmethod
    def score_ids(sequences):
        return [float(len(ids)) for ids in sequences]


def test_an_answer_is_read_at_its_end_of_turn_and_a_cut_one_loses_the_penalty():
    eos = 2
    scores = end_of_turn_scores(Lengths(), [[7, 7], [7, 7], [7] * 9], [[5, eos], [5, 5], [5]], eos, penalty=1.5)
    assert scores == [4.0, 5.0 - 1.5, 10.0 - 1.5], "an end of turn appended, the left end cut at max_length"


def test_trl_is_given_the_prompt_text_that_it_encodes_to_serving_s_ids(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    text = prompt_text(tokenizer, (("user", "hi there"),))
    served = tokenizer.encode(text, add_special_tokens=False)
    assert as_trl_reads_it(tokenizer, text) == (text, served)  # this tokenizer adds nothing
    tokenizer.add_bos_token = True  # one that adds a BOS, as Llama's do
    with_bos = tokenizer.bos_token + text  # a template that writes its own BOS
    trl_text, ids = as_trl_reads_it(tokenizer, with_bos)
    assert ids == tokenizer.encode(with_bos, add_special_tokens=False)
    assert tokenizer(trl_text)["input_ids"] == ids, "TRL reads one BOS, as serving did"
    assert trl_text == text


@pytest.mark.slow
def test_a_grpo_round_publishes_a_policy_the_reward_model_prefers_with_the_base_as_reference(
    taught_policy, tmp_path, monkeypatch
):
    ctx, announced = context(tmp_path, taught_policy, traffic(200), algorithm="grpo", grpo=GRPO)
    ppo_calls = []
    monkeypatch.setattr(round_module, "run_ppo", lambda *a, **k: ppo_calls.append(a))
    result = run_round(ctx)
    assert result.outcome == "published", result.reason
    assert ppo_calls == [], "the policy was trained by GRPO alone"
    metrics = result.metrics
    assert metrics["eval_new_mean_reward"] > metrics["eval_parent_mean_reward"] + 0.5, metrics
    assert metrics["grpo_reward_last"] > metrics["grpo_reward_first"], metrics
    assert metrics["seconds_grpo"] > 0 and metrics["grpo_samples_per_s"] > 0
    assert metrics["grpo_kl"] > 0 and metrics["eval_new_mean_kl"] <= ctx.settings.gates.kl_budget
    manifest = ctx.policies.verify(result.version)
    assert manifest.extra["algorithm"] == "grpo" and [e.version for e in announced] == [result.version]
    assert [f.path for f in manifest.files if "ref" in f.path.split("/")] == [], "no reference adapter shipped"
