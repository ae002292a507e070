"""The trainer's settings sections: rounds, the reward model, each algorithm, the gates, the roll-out.

Plain models without an environment of their own: TrainerSettings (flywheel/settings.py) holds
them and reads them as FLYWHEEL_<SECTION>__<FIELD>.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class RoundTriggerSection(BaseModel):
    """When a round starts (besides an operator's trigger)."""

    min_new_feedback: int = Field(64, description="New feedback events that start a round.")
    interval_s: float = Field(0.0, description="Start a round this often when any new feedback arrived (0: off).")
    min_pairs: int = Field(8, description="Fewest training pairs a round needs to run at all.")


class RewardSection(BaseModel):
    """The reward model: a scalar head on the policy's backbone, trained with TRL's RewardTrainer."""

    lora_rank: int = Field(16, description="LoRA rank of the reward model (0: full fine-tune).")
    lora_layers: int = Field(8, description="LoRA on the top N transformer layers only (0: all); cuts backward time.")
    learning_rate: float = Field(2e-4, description="AdamW learning rate.")
    epochs: float = Field(
        1.0, description="Passes over the training pairs of a fresh reward model (2 overfit 1,000 HH pairs: README)."
    )
    min_steps: int = Field(
        12, ge=0, description="...but at least this many optimiser steps (a few dozen live pairs give 6 an epoch)."
    )
    continue_training: bool = Field(
        True, description="Train the current reward model further on the pairs new since it, not a fresh one on all."
    )
    continue_epochs: float = Field(1.0, description="Passes over the pairs when the current model continues.")
    replay_ratio: float = Field(0.5, ge=0.0, description="Older pairs replayed per new pair when continuing.")
    batch_size: int = Field(8, description="Pairs per optimiser step.")
    group_by_length: bool = Field(
        True, description="Batch pairs of like length (random batches of HH pairs were 2.1x padding: docs/training.md)."
    )
    max_length: int = Field(
        256, description="Tokens per scored dialogue; longer ones keep their end (128 hid answer lengths past it)."
    )
    max_pairs: int = Field(2048, description="Most recent training pairs a round trains on (new ones if continuing).")
    heldout_percent: int = Field(10, description="Share of prompts held out for evaluation (fixed by hash).")
    min_heldout_prompts: int = Field(
        12, description="Held-out prompts at least, while prompts are few (next in hash order; at most a quarter)."
    )
    accuracy_floor: float = Field(0.6, description="Held-out pairwise accuracy a new reward model must reach.")
    accuracy_tolerance_stderrs: float = Field(
        1.64,
        ge=0.0,
        description="Standard errors of the held-out accuracy the floor and the not-below-the-previous rule allow.",
    )


class PPOSection(BaseModel):
    """PPO (TRL 1.12 PPOTrainer): policy = parent version + LoRA, reference = base, value head."""

    steps: int = Field(6, description="PPO updates (rollout batches) per round.")
    batch_size: int = Field(16, description="Prompts per rollout batch.")
    mini_batches: int = Field(2, description="Minibatches per rollout batch.")
    epochs: int = Field(4, description="PPO epochs over each rollout batch (2 left a round's policy where it was).")
    response_length: int = Field(64, description="Most tokens a rollout response may have.")
    learning_rate: float = Field(5e-4, description="AdamW learning rate, constant (policy LoRA and value head).")
    kl_coef: float = Field(0.05, description="β: per-token KL penalty to the reference, folded into the reward.")
    gae_lambda: float = Field(1.0, description="GAE lambda (gamma is 1); 1 gives every token the answer's final score.")
    temperature: float = Field(0.7, description="Sampling temperature of the rollouts.")
    missing_eos_penalty: float = Field(1.0, description="Score subtracted from a response that never ends.")
    lora_rank: int = Field(16, description="LoRA rank of the policy adapter (every algorithm's).")
    lora_layers: int = Field(
        8, ge=0, description="A fresh policy adapter on the top N layers only (0: all); a step 1.5x faster than all 30."
    )
    max_prompts: int = Field(512, description="Most recent distinct prompts drawn from traffic.")
    max_prompt_tokens: int = Field(192, description="Prompts longer than this (tokens) are skipped.")
    logprob_tolerance: float = Field(0.15, description="Largest mean |rollout - training| logprob gap accepted.")


class GRPOSection(BaseModel):
    """GRPO (TRL 1.12 GRPOTrainer) on the reward model: policy = parent version + LoRA, reference = base, no critic."""

    steps: int = Field(8, ge=1, description="GRPO updates per round.")
    prompts_per_step: int = Field(4, ge=1, description="Prompts per update.")
    group_size: int = Field(
        4, ge=2, description="Answers sampled per prompt; each one's advantage is its reward against its group's."
    )
    epochs: int = Field(1, ge=1, description="Passes over each update's answers (GRPO's μ).")
    response_length: int = Field(64, ge=1, description="Most tokens an answer may have.")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate, constant (policy LoRA).")
    kl_coef: float = Field(0.04, ge=0, description="β: weight of the per-token KL to the base in the loss.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature of the answers.")
    missing_eos_penalty: float = Field(1.0, ge=0, description="Reward subtracted from an answer that never ends.")
    max_prompt_tokens: int = Field(192, ge=1, description="Prompts longer than this (tokens) are skipped.")


class DPOSection(BaseModel):
    """DPO (TRL 1.12 DPOTrainer) on the pairs: policy = parent version + LoRA, reference = the parent."""

    beta: float = Field(0.1, gt=0, description="β: how far from the reference the pairs may pull the policy.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate, constant (policy LoRA).")
    epochs: float = Field(2.0, gt=0, description="Passes over the round's pairs.")
    min_steps: int = Field(12, ge=1, description="...but at least this many optimiser steps.")
    batch_size: int = Field(8, ge=1, description="Pairs per optimiser step.")
    max_length: int = Field(448, ge=16, description="Tokens of prompt + answer; longer ones lose their end.")
    replay_ratio: float = Field(
        1.0, ge=0.0, description="When the start policy was trained by DPO: older pairs replayed per new pair."
    )
    max_pairs: int = Field(1024, ge=1, description="Most pairs one round trains on (the newest).")


class KTOSection(BaseModel):
    """KTO (TRL 1.12 KTOTrainer) on single rated answers: thumbs up desirable, thumbs down not.

    A comparison or an imported pair gives both: its chosen answer desirable, its rejected one not.
    """

    beta: float = Field(0.1, gt=0, description="β: how far from the reference the examples may pull the policy.")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate, constant (policy LoRA).")
    epochs: float = Field(2.0, gt=0, description="Passes over the round's examples.")
    min_steps: int = Field(12, ge=1, description="...but at least this many optimiser steps.")
    batch_size: int = Field(
        8, ge=2, description="Examples per optimiser step (KTO estimates its KL term within a batch: at least 2)."
    )
    max_length: int = Field(448, ge=16, description="Tokens of prompt + answer; longer ones lose their end.")
    replay_ratio: float = Field(
        1.0, ge=0.0, description="When the start policy was trained by KTO: older examples replayed per new one."
    )
    max_examples: int = Field(2048, ge=2, description="Most examples one round trains on (the newest).")


class SFTSection(BaseModel):
    """The supervised phase (TRL 1.12 SFTTrainer) on users' corrections, before the round's PPO, DPO or KTO."""

    min_demonstrations: int = Field(
        16, ge=1, description="Corrections new since the start policy that a round needs before it runs the phase."
    )
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate, constant (policy LoRA).")
    epochs: float = Field(2.0, gt=0, description="Passes over the demonstrations.")
    min_steps: int = Field(4, ge=1, description="...but at least this many optimiser steps.")
    batch_size: int = Field(8, ge=1, description="Demonstrations per optimiser step.")
    max_length: int = Field(448, ge=16, description="Tokens of prompt + answer; longer ones lose their end.")
    max_demonstrations: int = Field(1024, ge=1, description="Most demonstrations one phase trains on (the newest).")


class JudgeSection(BaseModel):
    """AI feedback (trainer/judge.py): a judge model compares pairs of served answers against a constitution."""

    url: str = Field("", description="Base URL of the judge's OpenAI-compatible API: http://host:8000/v1 (empty: off).")
    model: str = Field("", description="The judge's model name (empty: the first one its /models lists).")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer key of the judge's API, when it needs one.")
    constitution: str = Field("", description="A text file of the principles to judge by (empty: the built-in ones).")
    pairs_per_round: int = Field(16, ge=0, description="Pairs of answers judged (each in both orders) per round.")
    weight: float = Field(
        1.0, ge=0.0, description="How many human pairs one AI pair counts as in training (0: judged, not trained on)."
    )
    feedback_url: str = Field(
        "http://127.0.0.1:8001", description="The feedback service that takes the verdicts (its import route)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Longest wait for one verdict.")
    wait_s: float = Field(30.0, ge=0, description="Longest wait for the verdicts to come back through Kafka.")


class RatersSection(BaseModel):
    """Rater reliability (trainer/raters.py): each user's agreement with the reward model in use."""

    mode: Literal["drop", "off"] = Field(
        "drop",
        description="drop: leave out the feedback of users who disagree with the rest beyond chance; off: keep all.",
    )
    min_agreement: float = Field(
        0.5, ge=0.0, le=1.0,
        description="A user is left out when even the top of their agreement's interval is below this (0.5: chance).",
    )  # fmt: skip
    z: float = Field(
        3.0,
        ge=0.0,
        description="Width of that interval in standard errors (Wilson score; 3: few honest users by chance).",
    )
    min_judgements: int = Field(8, ge=1, description="Judgements (pairs) a user needs before they can be left out.")
    max_judgements: int = Field(32, ge=1, description="A user's most recent judgements that are scored.")


class GateSection(BaseModel):
    """What a round must show before its policy is published."""

    eval_prompts: int = Field(32, description="Held-out prompts the evaluation generates for.")
    eval_samples: int = Field(4, description="Answers sampled per held-out prompt (same seeds for every policy).")
    min_reward_gain: float = Field(0.0, description="Mean per-prompt reward gain over the parent must exceed this.")
    min_gain_stderrs: float = Field(
        2.0, description="...and exceed this many standard errors of the per-prompt gains (<0: unless so much worse).",
    )
    kl_budget: float = Field(25.0, description="Largest mean sequence KL(policy ‖ reference) in nats.")
    length_band: float = Field(2.0, description="Mean answer length may grow to at most x times the reference's.")
    min_length_ratio: float = Field(0.125, description="...and shrink to no less than x times it (no blanks).")


class RolloutSection(BaseModel):
    """The roll-out controller: promote or roll back the canary on live thumbs (Beta-Binomial rule)."""

    enabled: bool = Field(True, description="Decide automatically (operators can always decide by hand).")
    check_interval_s: float = Field(5.0, description="How often the thumbs are counted.")
    min_samples: int = Field(20, description="Thumbs each of canary and stable needs before they count.")
    min_comparisons: int = Field(10, description="Head-to-head comparisons needed before they count.")
    promote_probability: float = Field(0.95, description="Promote once a signal P(canary better) reaches this.")
    rollback_probability: float = Field(0.05, description="Roll back once that probability falls to this.")
    max_samples: int = Field(400, description="Thumbs a side (or comparisons) before an undecided canary rolls back.")
    count_anonymous: bool | None = Field(
        None, description="Count users without an API key in the roll-out signals (default: only with env=local)."
    )
