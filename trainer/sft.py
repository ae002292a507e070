"""The supervised phase: the policy's LoRA learns users' own rewrites of its answers (TRL 1.12's SFTTrainer).

A correction says what the answer should have been, which no rating can: it is a demonstration
(the supervised step that comes before RL in InstructGPT) as well as a pair (the rewrite beats
the original, trainer/pairs.py). Once enough corrections are new since the policy a round starts
from (`sft.min_demonstrations`), the round first fine-tunes that policy on them, the loss on the
answer only, and the round's PPO, GRPO, DPO or KTO goes on from the result. Nothing is published from
this phase alone: the round's evaluation gates the final policy against its parent, as always.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from flywheel.settings import SFTSection
from trainer.dpo import fit_offline
from trainer.ppo import PolicyLora, PolicyTraining
from trainer.records import CorrectedResponse
from trainer.reward import prompt_text


def sft_rows(tokenizer, demonstrations: Sequence[CorrectedResponse]) -> list[dict[str, str]]:
    """TRL's prompt-completion format: the chat prompt, and the rewrite ending with the end-of-turn token."""
    return [{"prompt": prompt_text(tokenizer, d.messages), "completion": d.text + tokenizer.eos_token}
            for d in demonstrations]  # fmt: skip


def run_sft(
    base_model: str,
    start_adapter: Path | None,
    demonstrations: Sequence[CorrectedResponse],
    config: SFTSection,
    lora: PolicyLora,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """Supervised fine-tuning of the adapter in `start_adapter` (a fresh one when None) on the rewrites."""
    from trl import SFTConfig, SFTTrainer

    if not demonstrations:
        raise ValueError("the supervised phase needs at least one demonstration")
    run = fit_offline(
        "sft", base_model, start_adapter, lora, config, work_dir, seed, len(demonstrations),
        lambda tokenizer: sft_rows(tokenizer, demonstrations), SFTTrainer, SFTConfig, report,
        completion_only_loss=True,
    )  # fmt: skip
    return run.training({"sft_demonstrations": float(len(demonstrations)), "sft_seconds": run.seconds})
