"""PPO on the policy's LoRA adapter with TRL 1.12's PPOTrainer (the InstructGPT recipe).

TRL does the maths: a value head (initialised from the reward model), GAE, whitened advantages,
the clipped surrogate, and a per-token KL penalty to the reference folded into the reward
(https://arxiv.org/abs/2403.17031). The policy is the parent version (base + its adapter, trained
further); the reference is the base, the same adapter switched off. This module wires it and
checks that rollout and training logprobs agree before any update is trusted.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerBase, TrainerCallback
from transformers.modeling_outputs import BaseModelOutput

from flywheel.settings import PPOSection
from trainer.hardware import compute_dtype, device, trainer_args
from trainer.pairs import Messages
from trainer.reward import RewardModel, linear_names, load_tokenizer, prompt_ids, quiet, top_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyLora:
    """The shape of a fresh policy adapter; a continued one keeps the shape it was made with."""

    rank: int
    layers: int = 0  # LoRA on the top N transformer layers only (0: every layer)

    @classmethod
    def of(cls, config: PPOSection) -> PolicyLora:
        return cls(config.lora_rank, config.lora_layers)


def lora_config(model: torch.nn.Module, lora: PolicyLora):
    """A fresh policy adapter's peft config for `model`."""
    from peft import LoraConfig

    if lora.layers:  # peft takes layers_to_transform only with the modules named
        targets = {"target_modules": linear_names(model),
                   "layers_to_transform": top_layers(model.config.num_hidden_layers, lora.layers)}  # fmt: skip
    else:
        targets = {"target_modules": "all-linear"}
    return LoraConfig(r=lora.rank, lora_alpha=2 * lora.rank, task_type="CAUSAL_LM", **targets)


def load_policy(base_model: str, adapter_dir: Path | None, lora: PolicyLora, trainable: bool = True):
    """Base + the parent's adapter (or a fresh one for the first version), as a PeftModel.

    A fresh adapter on the top layers only cuts the backward pass: nothing below them needs a
    gradient (bench/policy_step.py measures it).
    """
    from peft import PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=compute_dtype()).to(device())
    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=trainable)
    return get_peft_model(base, lora_config(base, lora))


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Messages], max_tokens: int) -> list[list[int]]:
    encoded = [prompt_ids(tokenizer, messages) for messages in prompts]
    return [ids for ids in encoded if len(ids) <= max_tokens]


def _left_pad(sequences: Sequence[list[int]], pad: int) -> torch.Tensor:
    width = max(len(ids) for ids in sequences)
    return torch.tensor([[pad] * (width - len(ids)) + ids for ids in sequences], device=device())


@torch.no_grad()
def logprob_gap(policy, tokenizer: PreTrainedTokenizerBase, queries: Sequence[list[int]], config: PPOSection) -> float:
    """Mean |rollout - training| logprob of sampled tokens, computed as TRL computes each.

    Rollout logprobs come from `generate`'s scores (KV cache), training ones from a full forward
    pass; PPO's ratio is only meaningful when the two agree.
    """
    from trl.experimental.ppo.ppo_trainer import batch_generation, forward, truncate_response
    from trl.trainer.utils import selective_log_softmax

    policy.eval()
    query = _left_pad(queries, tokenizer.pad_token_id)
    generation = GenerationConfig(
        max_new_tokens=config.response_length, temperature=config.temperature + 1e-7, top_k=0, top_p=1.0,
        do_sample=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    query_response, logits = batch_generation(policy, query, len(queries), tokenizer.pad_token_id, generation)
    context = query.shape[1]
    response = query_response[:, context:]
    rollout = selective_log_softmax(logits, response)
    output = forward(policy, query_response, tokenizer.pad_token_id)
    training = selective_log_softmax(output.logits[:, context - 1 : -1] / (config.temperature + 1e-7), response)
    valid = truncate_response(tokenizer.eos_token_id, tokenizer.pad_token_id, response) != tokenizer.pad_token_id
    return float((rollout - training).abs()[valid].mean())


class EndOfTurnReward(torch.nn.Module):
    """The reward model in the shape TRL's PPO reads it (`backbone`, then `score` at the answer's last token).

    An answer cut at `response_length` is scored as if its turn ended there (an <|im_end|> appended), the
    way the reward model was trained and the evaluation reads it. Read at a mid-sentence token instead,
    the score is one the reward model never learned (about 0 where the same answers score -1.2 at their
    end), and PPO optimised that rather than the users' preference. TRL's `missing_eos_penalty` still
    applies to cut answers.
    """

    base_model_prefix = "backbone"

    def __init__(self, model: torch.nn.Module, pad_token_id: int, eos_token_id: int) -> None:
        super().__init__()
        self.model = model  # a sequence classifier that pools at the last token that is not padding
        self.pad, self.eos = pad_token_id, eos_token_id
        self.score = torch.nn.Identity()  # `backbone` already gives the score

    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> BaseModelOutput:
        ids = torch.where(attention_mask.bool(), input_ids, self.pad)
        ids = torch.cat([ids, torch.full_like(ids[:, :1], self.pad)], 1)
        last = (torch.arange(ids.shape[1], device=ids.device) * (ids != self.pad)).argmax(1)
        cut = ids[torch.arange(len(ids), device=ids.device), last] != self.eos
        ids[cut, last[cut] + 1] = self.eos
        scores = self.model(input_ids=ids, attention_mask=(ids != self.pad).long()).logits[:, :1].float()
        # One score per position: TRL picks it at the answer's last token.
        return BaseModelOutput(hidden_states=(scores.unsqueeze(1).expand(-1, input_ids.shape[1], -1),))


def value_model_from(reward_model: torch.nn.Module) -> torch.nn.Module:
    """The critic: the reward model's backbone with its head zeroed, training what the reward model trained.

    InstructGPT starts the value head from the reward model, but ours was trained to read a dialogue at
    its end only: read at every token of an answer it swings by ±0.7 (measured on the default model)
    around a return of about -2, more than the differences between answers PPO should follow. A zero
    head starts every value at 0, so the first advantages are the whitened returns; it learns from there.
    The backbone keeps the reward model's features; only its LoRA (top layers) and the head train, so
    the critic's backward pass stops at those layers.
    """
    value_model = copy.deepcopy(reward_model)
    with torch.no_grad():
        for param in value_model.score.parameters():
            param.zero_()
    return value_model


class _CollectLogs(TrainerCallback):
    def __init__(self, report: Callable[[int, int, dict], None] | None) -> None:
        self.logs: list[dict] = []
        self.report = report

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "objective/scores" in logs:
            self.logs.append(dict(logs))
            if self.report:
                self.report(state.global_step, state.max_steps, dict(logs))


@dataclass
class PolicyTraining:
    """A round's trained policy (PPO or DPO) and how its training went."""

    policy: torch.nn.Module  # the PeftModel with the trained adapter
    seconds: float
    samples_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what the manifest records of it (DPO: trained_through_seq)


def run_ppo(
    base_model: str,
    parent_adapter: Path | None,
    reward: RewardModel,
    prompts: Sequence[Messages],
    config: PPOSection,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """`config.steps` PPO updates of `config.batch_size` rollouts each on `prompts`."""
    import warnings

    from datasets import Dataset

    with warnings.catch_warnings():  # TRL 1.12 is pinned; its "experimental" notice says nothing new
        warnings.simplefilter("ignore")
        from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = load_tokenizer(base_model)
    queries = encode_prompts(tokenizer, prompts, config.max_prompt_tokens)
    if not queries:
        raise ValueError("no prompt short enough for PPO")
    torch.manual_seed(seed)
    policy = load_policy(base_model, parent_adapter, PolicyLora.of(config))
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    gap = logprob_gap(policy, tokenizer, queries[: min(4, len(queries))], config)
    if gap > config.logprob_tolerance:
        raise RuntimeError(
            f"rollout and training logprobs disagree by {gap:.3f} on average (> {config.logprob_tolerance})"
        )

    value_model = value_model_from(reward.model)
    for param in reward.model.parameters():
        param.requires_grad_(False)
    batch = min(config.batch_size, len(queries))
    mini_batches = config.mini_batches if batch % config.mini_batches == 0 else 1
    args = PPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_mini_batches=mini_batches,
        local_rollout_forward_batch_size=batch,
        total_episodes=config.steps * batch,
        num_ppo_epochs=config.epochs,
        response_length=config.response_length,
        temperature=config.temperature,
        stop_token="eos",
        missing_eos_penalty=config.missing_eos_penalty,
        kl_coef=config.kl_coef,
        gamma=1.0,
        lam=config.gae_lambda,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",  # a round is a few dozen updates; a linear decay would halve them
        num_sample_generations=0,
        gradient_checkpointing=False,  # TRL turns it on; here memory is plenty and recomputing costs 2x
        logging_steps=1,
        **trainer_args(seed),
    )
    dataset = Dataset.from_list([{"input_ids": ids} for ids in queries])
    collect = _CollectLogs(report)
    started = time.monotonic()
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,  # a PeftModel: the reference is the same weights with the adapter off
        reward_model=EndOfTurnReward(reward.model, tokenizer.pad_token_id, tokenizer.eos_token_id),
        train_dataset=dataset,
        eval_dataset=dataset.select(range(min(batch, len(dataset)))),
        value_model=value_model,
        callbacks=[collect],
    )
    quiet(trainer)
    trainer.train()
    seconds = time.monotonic() - started
    trained = trainer.accelerator.unwrap_model(trainer.model).policy
    trained.eval()
    last = collect.logs[-1] if collect.logs else {}
    metrics = {
        "ppo_logprob_gap": gap,
        "ppo_score_first": collect.logs[0]["objective/scores"] if collect.logs else float("nan"),
        "ppo_score_last": last.get("objective/scores", float("nan")),
        "ppo_kl": last.get("objective/kl", float("nan")),
        "ppo_entropy": last.get("objective/entropy", float("nan")),
        "ppo_rlhf_reward": last.get("objective/rlhf_reward", float("nan")),
        "ppo_ratio": last.get("val/ratio", float("nan")),
        "ppo_beta": config.kl_coef,
    }
    samples = config.steps * batch
    log.info("PPO: %d updates, %d samples in %.0f s; %s", config.steps, samples, seconds, metrics)
    return PolicyTraining(trained, seconds, samples / max(seconds, 1e-9), metrics)
