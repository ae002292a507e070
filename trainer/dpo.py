"""DPO on the policy's LoRA adapter, straight from the preference pairs (TRL 1.12's DPOTrainer).

PPO learns what users want through the reward model and its own rollouts: every update samples
answers, scores them and trains a critic, which on this machine's CPU is most of a round. DPO
(https://arxiv.org/abs/2305.18290) trains the policy on the pairs themselves (the preferred
answer's log-ratio to the reference against the other's), with no generation, reward model or
value model in the loop: a round costs a few forward and backward passes per pair. The pairs are
the users' own verdicts on what the policy served, so a behaviour users like shows up in the
policy even when the base model rarely produces it and PPO's rollouts would rarely find it.

The reference is the policy the round starts from (TRL copies the start adapter into a frozen
"ref" adapter): each round stays close to its parent, and the evaluation's KL budget bounds the
drift from the base across rounds. The reward model still gates what is published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from flywheel.settings import DPOSection, KTOSection, SFTSection
from trainer.hardware import trainer_args
from trainer.pairs import Pair
from trainer.ppo import PolicyTraining, load_policy
from trainer.reward import Progress, load_tokenizer, quiet

log = logging.getLogger(__name__)

REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of a pretrained adapter


def chat_prompt(tokenizer, messages) -> str:
    """The chat template up to the assistant's turn header: the prompt as serving and the reward model read it."""
    chat = [{"role": role, "content": content} for role, content in messages]
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def dpo_rows(tokenizer, pairs: Sequence[Pair]) -> list[dict[str, str]]:
    """Pairs as TRL's standard (text) preference format, tokenized as serving and the reward model read them.

    Each answer ends with the end-of-turn token, the one generation stops at (a conversational row
    would add the template's newline after it, a token the policy never emits).
    """
    return [
        {"prompt": chat_prompt(tokenizer, pair.messages), "chosen": pair.chosen + tokenizer.eos_token,
         "rejected": pair.rejected + tokenizer.eos_token}
        for pair in pairs
    ]  # fmt: skip


def offline_steps(config: DPOSection | KTOSection | SFTSection, rows: int) -> tuple[float, int]:
    """Epochs and optimiser steps for `rows`: `epochs`, or more when that would be under `min_steps`."""
    per_epoch = max(1, -(-rows // config.batch_size))
    epochs = max(config.epochs, config.min_steps / per_epoch)
    return epochs, max(1, round(epochs * per_epoch))


def offline_args(config: DPOSection | KTOSection | SFTSection, work_dir: Path, steps: int, seed: int) -> dict:
    """What the DPO, KTO and SFT configs share: one constant-rate run of `steps` steps on the policy's LoRA."""
    return dict(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",  # a round is a few dozen steps; warm-up and decay would waste them
        max_length=config.max_length,
        pad_to_multiple_of=32,  # few distinct shapes: oneDNN builds kernels per shape
        gradient_checkpointing=False,  # memory is plenty here and recomputing costs 2x
        logging_steps=1,
        dataset_num_proc=None,
        **trainer_args(seed),
    )


def loss_metrics(prefix: str, output, collected: list[dict]) -> tuple[dict[str, float], dict]:
    """`<prefix>_loss` (the mean), its first and last step's, and the last step's logs."""
    first, last = (collected[0], collected[-1]) if collected else ({}, {})
    nan = float("nan")
    losses = {f"{prefix}_loss": float(output.training_loss), f"{prefix}_loss_first": first.get("loss", nan),
              f"{prefix}_loss_last": last.get("loss", nan)}  # fmt: skip
    return losses, last


def train_offline(make_trainer: Callable[[list], object], report: Callable[[int, int, dict], None] | None):
    """Build a TRL trainer (given its callbacks), train it; the trained PeftModel, TRL's output, the step logs.

    Only the trained adapter is kept: TRL's frozen "ref" copy of a pretrained adapter is deleted.
    """
    import warnings

    collected: list[dict] = []

    def keep(step: int, total: int, logs: dict) -> None:
        if "loss" in logs:
            collected.append(logs)
        if report:
            report(step, total, logs)

    with warnings.catch_warnings():  # "the base model matches your adapter only when fresh": it is, or ref is a copy
        warnings.simplefilter("ignore")
        trainer = make_trainer([Progress(keep)])
    quiet(trainer)
    output = trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if REF_ADAPTER in getattr(trained, "peft_config", {}):
        trained.delete_adapter(REF_ADAPTER)
    trained.set_adapter("default")
    trained.eval()
    return trained, output, collected


def run_dpo(
    base_model: str,
    start_adapter: Path | None,
    pairs: Sequence[Pair],
    config: DPOSection,
    lora_rank: int,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """DPO of the adapter in `start_adapter` (a fresh one when None) on `pairs`; the trained PeftModel."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    tokenizer = load_tokenizer(base_model)
    torch.manual_seed(seed)
    policy = load_policy(base_model, start_adapter, lora_rank)
    epochs, steps = offline_steps(config, len(pairs))
    args = DPOConfig(**offline_args(config, work_dir, steps, seed), beta=config.beta)
    rows = Dataset.from_list(dpo_rows(tokenizer, pairs))
    started = time.monotonic()
    trained, output, collected = train_offline(
        lambda callbacks: DPOTrainer(
            model=policy,
            ref_model=None,  # a PeftModel: TRL keeps the start adapter, frozen, as the reference
            args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks,
        ),
        report,
    )  # fmt: skip
    seconds = time.monotonic() - started
    losses, last = loss_metrics("dpo", output, collected)
    nan = float("nan")
    metrics = {
        **losses,
        "dpo_accuracy_last": last.get("rewards/accuracies", nan),
        "dpo_margin_last": last.get("rewards/margins", nan),
        "dpo_pairs": float(len(pairs)),
        "dpo_epochs": epochs,
        "dpo_steps": float(steps),
        "dpo_beta": config.beta,
    }
    samples = steps * config.batch_size
    log.info("DPO: %d steps on %d pairs (%.1f epochs) in %.0f s; %s", steps, len(pairs), epochs, seconds, metrics)
    return PolicyTraining(trained, seconds, samples / max(seconds, 1e-9), metrics)
