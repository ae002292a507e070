"""Evaluation of a policy on held-out prompts, and the gates a round must pass to publish.

The gates are pure functions of measured numbers; `measure_policy` is the only part that runs
a model. KL is estimated per sequence as the sum over sampled tokens of log π(y) - log π_ref(y),
on the policy's own samples (the k1 estimator, unbiased; http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from flywheel.settings import GateSection, RewardSection
from trainer.pairs import effective_count
from trainer.reward import RewardModel, end_of_turn_scores

EVAL_BATCH = 16  # answers generated and scored together; the logits of a batch are held in fp32


@dataclass(frozen=True)
class PolicyMeasure:
    prompt_rewards: tuple[float, ...]  # mean reward of each held-out prompt's answers, in prompt order
    mean_kl: float
    mean_length: float
    ended: float = float("nan")  # share of answers that ended within the length limit

    @property
    def mean_reward(self) -> float:
        return sum(self.prompt_rewards) / len(self.prompt_rewards) if self.prompt_rewards else float("nan")


def _sequence_logprobs(
    model, query_response: torch.Tensor, context: int, pad: int, temperature: float = 1.0
) -> torch.Tensor:  # fmt: skip
    mask = query_response != pad
    position_ids = (mask.cumsum(1) - mask.long()).clamp(min=0)
    logits = model(input_ids=query_response, attention_mask=mask, position_ids=position_ids).logits
    logits = logits[:, context - 1 : -1].float() / temperature
    response = query_response[:, context:]
    return logits.gather(-1, response.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


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
    query = torch.tensor([[pad] * (width - len(q)) + q for q in queries], device=policy.device)
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
    queries: Sequence[list[int]],
    response_length: int,
    temperature: float = 1.0,
    samples: int = 1,
    seed: int = 0,
    missing_eos_penalty: float = 0.0,
) -> PolicyMeasure:
    """`samples` answers per prompt at `temperature`, scored; KL to the reference and length.

    Every policy a round compares is measured with the same prompts, batches and seeds, so their
    per-prompt rewards can be compared pair by pair. `policy` is a PeftModel; its reference is the
    same model with the adapter disabled. An answer cut at `response_length` is scored as PPO's
    reward scores it: as if it ended there, less `missing_eos_penalty`.
    """
    rows = [(i, query) for i, query in enumerate(queries) for _ in range(samples)]
    pad, scores, kls, lengths, ended = tokenizer.pad_token_id, [], [], [], []
    for start in range(0, len(rows), EVAL_BATCH):
        chunk = rows[start : start + EVAL_BATCH]
        drawn = sample_answers(policy, tokenizer, [q for _, q in chunk], response_length, temperature, seed + start)
        logp = _sequence_logprobs(policy, drawn.query_response, drawn.context, pad, temperature)
        with policy.disable_adapter():
            ref_logp = _sequence_logprobs(policy, drawn.query_response, drawn.context, pad, temperature)
        kls += ((logp - ref_logp) * drawn.valid).sum(1).tolist()
        lengths += drawn.valid.sum(1).tolist()
        finished = (drawn.query_response[:, drawn.context :] == tokenizer.eos_token_id).any(1).tolist()
        ended += finished
        answers = [r[m].tolist() for r, m in zip(drawn.query_response[:, drawn.context :], drawn.valid, strict=True)]
        scores += end_of_turn_scores(reward, [queries[i] for i, _ in chunk], answers, tokenizer.eos_token_id,
                                     missing_eos_penalty)  # fmt: skip
    per_prompt = [sum(scores[i * samples : (i + 1) * samples]) / samples for i in range(len(queries))]
    return PolicyMeasure(
        prompt_rewards=tuple(per_prompt),
        mean_kl=sum(kls) / len(kls),
        mean_length=sum(lengths) / len(lengths),
        ended=sum(ended) / len(ended),
    )


def reward_gain(new: PolicyMeasure, parent: PolicyMeasure) -> tuple[float, float]:
    """Mean per-prompt gain of `new` over `parent` on the same prompts, and its standard error."""
    gains = [a - b for a, b in zip(new.prompt_rewards, parent.prompt_rewards, strict=True)]
    if not gains:
        return float("nan"), float("nan")
    mean = sum(gains) / len(gains)
    if len(gains) < 2:
        return mean, float("nan")  # no spread to measure: only a zero-noise gate (min_gain_stderrs=0) can pass
    variance = sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)
    return mean, math.sqrt(variance / len(gains))


def reward_model_gate(
    correct: Sequence[float],
    previous_correct: Sequence[float] | None,
    config: RewardSection,
    groups: Sequence[int] | None = None,
) -> str:
    """Why the new reward model must not be used ('' when it passes).

    `correct` is the new model's per-pair result on the held-out pairs (1, 0.5 for a tie, 0), and
    `previous_correct` its predecessor's on the same pairs. With a few dozen pairs an accuracy moves
    by ±0.1 from noise alone, so both rules allow `accuracy_tolerance_stderrs` standard errors: the
    floor the binomial one at the floor, the predecessor the paired one of the per-pair differences
    (a model as good as the floor, or as its predecessor, is refused by noise ~5 % of the time at 1.64).
    Pairs that share an answer (`groups`, trainer/pairs.answer_groups) are not independent: one
    thumbs up paired with a prompt's ten thumbs down is one judgement of one answer, right or wrong
    ten times. The floor counts the pairs' effective number, the paired rule clusters by group.
    """
    if not correct:
        return "no held-out pairs to measure the reward model on"
    n, z = len(correct), config.accuracy_tolerance_stderrs
    groups = list(range(n)) if groups is None else groups
    independent = effective_count(groups)
    accuracy = sum(correct) / n
    floor = config.accuracy_floor
    tolerance = z * math.sqrt(floor * (1.0 - floor) / independent)
    size = f"{n} pairs" if independent == n else f"{n} pairs (worth {independent:.1f} independent ones)"
    if accuracy < floor - tolerance:
        return (
            f"reward model held-out accuracy {accuracy:.3f} on {size} is below the floor {floor:.3f}"
            f" by more than its tolerance {tolerance:.3f}"
        )
    if previous_correct is None:
        return ""
    differences = [a - b for a, b in zip(correct, previous_correct, strict=True)]
    drop = -sum(differences) / n
    spread = clustered_stderr(differences, groups)
    if drop > 0 and drop > z * spread:
        previous = sum(previous_correct) / n
        return (
            f"reward model held-out accuracy {accuracy:.3f} fell below the previous model's {previous:.3f}"
            f" on the same {size} by more than noise ({drop:.3f} > {z:g} standard errors of {spread:.3f})"
        )
    return ""


def clustered_stderr(values: Sequence[float], groups: Sequence[int]) -> float:
    """The standard error of the mean of `values` whose `groups` may move together (the cluster-robust
    one; with groups of one it is the usual sample standard error). 0 with fewer than two groups."""
    mean = sum(values) / len(values)
    sums: dict[int, float] = defaultdict(float)
    for value, group in zip(values, groups, strict=True):
        sums[group] += value - mean
    if len(sums) < 2:
        return 0.0
    return math.sqrt(len(sums) / (len(sums) - 1) * sum(s * s for s in sums.values())) / len(values)


def policy_gate(new: PolicyMeasure, parent: PolicyMeasure, reference: PolicyMeasure, config: GateSection) -> list[str]:
    """Every reason the new policy must not be published (empty when it passes)."""
    reason = gain_gate(new, parent, config)
    return ([reason] if reason else []) + guard_gate(new, reference, config)


def gain_gate(new: PolicyMeasure, parent: PolicyMeasure, config: GateSection) -> str:
    """Why the new policy's reward did not rise clearly over its parent's ('' when it did)."""
    gain, stderr = reward_gain(new, parent)
    # A negative margin lets a version through unless it is that many standard errors worse; with
    # no spread to measure (one prompt) only a margin of 0 or below can pass.
    noise = config.min_gain_stderrs * stderr if config.min_gain_stderrs else 0.0
    if config.min_gain_stderrs < 0 and math.isnan(stderr):
        noise = 0.0
    if gain > config.min_reward_gain and gain > noise:
        return ""
    return (
        f"mean held-out reward did not rise beyond noise: {new.mean_reward:.3f} vs parent {parent.mean_reward:.3f}"
        f" (gain {gain:.3f} ± {stderr:.3f} over {len(new.prompt_rewards)} prompts;"
        f" needs > {config.min_reward_gain:g} and > {config.min_gain_stderrs:g} standard errors)"
    )


def guard_gate(new: PolicyMeasure, reference: PolicyMeasure, config: GateSection) -> list[str]:
    """Every way the new policy strayed too far from the reference: KL over budget, length out of band."""
    reasons = []
    if not new.mean_kl <= config.kl_budget:
        reasons.append(f"KL to the reference {new.mean_kl:.2f} exceeds the budget {config.kl_budget:.2f}")
    low, high = reference.mean_length * config.min_length_ratio, reference.mean_length * config.length_band
    if not low <= new.mean_length <= high:
        reasons.append(
            f"mean answer length {new.mean_length:.1f} left the band [{low:.1f}, {high:.1f}] around the reference's"
        )
    return reasons
