"""Evaluation of a policy on held-out prompts, and the gates a round must pass to publish.

The gates are pure functions of measured numbers; `measure_policy` is the only part that runs
a model. KL is estimated per sequence as the sum over sampled tokens of log π(y) - log π_ref(y),
on the policy's own samples (the k1 estimator, unbiased; http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from flywheel.settings import GateSection, RewardSection
from trainer.pairs import Messages
from trainer.reward import RewardModel


@dataclass(frozen=True)
class PolicyMeasure:
    mean_reward: float
    mean_kl: float
    mean_length: float


def _sequence_logprobs(model, query_response: torch.Tensor, context: int, pad: int) -> torch.Tensor:
    mask = query_response != pad
    position_ids = (mask.cumsum(1) - mask.long()).clamp(min=0)
    logits = model(input_ids=query_response, attention_mask=mask, position_ids=position_ids).logits
    logits = logits[:, context - 1 : -1].float()
    response = query_response[:, context:]
    return torch.log_softmax(logits, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)


@dataclass
class Samples:
    query_response: torch.Tensor  # left-padded prompts, then answers padded after their end of turn
    context: int
    valid: torch.Tensor  # answer tokens up to and including the end of turn
    answers: list[str]


@torch.no_grad()
def sample_answers(
    policy, tokenizer: PreTrainedTokenizerBase, queries: Sequence[list[int]], response_length: int,
    temperature: float = 1.0, seed: int = 0,
) -> Samples:  # fmt: skip
    """One sampled answer per query (prompt token ids), with a fixed seed."""
    policy.eval()
    pad = tokenizer.pad_token_id
    width = max(len(q) for q in queries)
    query = torch.tensor([[pad] * (width - len(q)) + q for q in queries])
    torch.manual_seed(seed)
    config = GenerationConfig(
        max_new_tokens=response_length, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
    )  # fmt: skip
    output = policy.generate(input_ids=query, attention_mask=query != pad, generation_config=config)
    response = output[:, width:]
    # Everything after the first end-of-turn is padding.
    ended = (response == tokenizer.eos_token_id).int().cumsum(1)
    valid = (ended == 0) | ((ended == 1) & (response == tokenizer.eos_token_id))
    response = torch.where(valid, response, torch.full_like(response, pad))
    answers = [tokenizer.decode(r[m], skip_special_tokens=True).strip() for r, m in zip(response, valid, strict=True)]
    return Samples(torch.cat([query, response], 1), width, valid, answers)


@torch.no_grad()
def measure_policy(
    policy,
    tokenizer: PreTrainedTokenizerBase,
    reward: RewardModel,
    prompts: Sequence[Messages],
    queries: Sequence[list[int]],
    response_length: int,
    seed: int = 0,
) -> PolicyMeasure:
    """Sample one answer per prompt (fixed seed), score it, measure KL to the reference and length.

    `policy` is a PeftModel; its reference is the same model with the adapter disabled.
    """
    samples = sample_answers(policy, tokenizer, queries, response_length, 1.0, seed)
    pad = tokenizer.pad_token_id
    logp = _sequence_logprobs(policy, samples.query_response, samples.context, pad)
    with policy.disable_adapter():
        ref_logp = _sequence_logprobs(policy, samples.query_response, samples.context, pad)
    kl = ((logp - ref_logp) * samples.valid).sum(1)
    scores = reward.score(prompts, samples.answers)
    return PolicyMeasure(
        mean_reward=sum(scores) / len(scores),
        mean_kl=float(kl.mean()),
        mean_length=float(samples.valid.sum(1).float().mean()),
    )


def reward_model_gate(accuracy: float, previous_accuracy: float | None, config: RewardSection) -> str:
    """Why the new reward model must not be used ('' when it passes)."""
    if math.isnan(accuracy):
        return "no held-out pairs to measure the reward model on"
    if accuracy < config.accuracy_floor:
        return f"reward model held-out accuracy {accuracy:.3f} is below the floor {config.accuracy_floor:.3f}"
    if previous_accuracy is not None and accuracy < previous_accuracy:
        return f"reward model held-out accuracy {accuracy:.3f} fell below the previous model's {previous_accuracy:.3f}"
    return ""


def policy_gate(new: PolicyMeasure, parent: PolicyMeasure, reference: PolicyMeasure, config: GateSection) -> list[str]:
    """Every reason the new policy must not be published (empty when it passes)."""
    reasons = []
    gain = new.mean_reward - parent.mean_reward
    if not gain > config.min_reward_gain:
        reasons.append(f"mean held-out reward did not rise: {new.mean_reward:.3f} vs parent {parent.mean_reward:.3f}")
    if not new.mean_kl <= config.kl_budget:
        reasons.append(f"KL to the reference {new.mean_kl:.2f} exceeds the budget {config.kl_budget:.2f}")
    low, high = reference.mean_length / config.length_band, reference.mean_length * config.length_band
    if not low <= new.mean_length <= high:
        reasons.append(
            f"mean answer length {new.mean_length:.1f} left the band [{low:.1f}, {high:.1f}] around the reference's"
        )
    return reasons
