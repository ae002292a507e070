"""The supervised phase: the policy's LoRA learns users' own rewrites of its answers (TRL 1.12's SFTTrainer).

A correction says what the answer should have been, which no rating can: it is a demonstration
(the supervised step that comes before RL in InstructGPT) as well as a pair (the rewrite beats
the original, trainer/pairs.py). Once enough corrections are new since the policy a round starts
from (`sft.min_demonstrations`), the round first fine-tunes that policy on them, the loss on the
answer only, and the round's PPO, DPO or KTO goes on from the result. Nothing is published from
this phase alone: the round's evaluation gates the final policy against its parent, as always.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from flywheel.settings import SFTSection
from trainer.dpo import chat_prompt, loss_metrics, offline_args, offline_steps, train_offline
from trainer.ppo import PolicyTraining, load_policy
from trainer.records import CorrectedResponse
from trainer.reward import load_tokenizer

log = logging.getLogger(__name__)


def sft_rows(tokenizer, demonstrations: Sequence[CorrectedResponse]) -> list[dict[str, str]]:
    """TRL's prompt-completion format: the chat prompt, and the rewrite ending with the end-of-turn token."""
    return [{"prompt": chat_prompt(tokenizer, d.messages), "completion": d.text + tokenizer.eos_token}
            for d in demonstrations]  # fmt: skip


def run_sft(
    base_model: str,
    start_adapter: Path | None,
    demonstrations: Sequence[CorrectedResponse],
    config: SFTSection,
    lora_rank: int,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """Supervised fine-tuning of the adapter in `start_adapter` (a fresh one when None) on the rewrites."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not demonstrations:
        raise ValueError("the supervised phase needs at least one demonstration")
    tokenizer = load_tokenizer(base_model)
    torch.manual_seed(seed)
    policy = load_policy(base_model, start_adapter, lora_rank)
    epochs, steps = offline_steps(config, len(demonstrations))
    args = offline_args(config, work_dir, steps, seed)
    rows = Dataset.from_list(sft_rows(tokenizer, demonstrations))
    started = time.monotonic()
    trained, output, collected = train_offline(
        lambda callbacks: SFTTrainer(
            model=policy, args=SFTConfig(**args, completion_only_loss=True), train_dataset=rows,
            processing_class=tokenizer, callbacks=callbacks,
        ),
        report,
    )  # fmt: skip
    seconds = time.monotonic() - started
    losses, _ = loss_metrics("sft", output, collected)
    metrics = {
        **losses,
        "sft_demonstrations": float(len(demonstrations)),
        "sft_epochs": epochs,
        "sft_steps": float(steps),
        "sft_seconds": seconds,
    }
    log.info("SFT: %d steps on %d demonstrations (%.1f epochs) in %.0f s; %s", steps, len(demonstrations), epochs,
             seconds, metrics)  # fmt: skip
    return PolicyTraining(trained, seconds, steps * config.batch_size / max(seconds, 1e-9), metrics)
