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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from flywheel.settings import DPOSection, KTOSection, SFTSection
from trainer.hardware import trainer_args
from trainer.pairs import Pair
from trainer.ppo import PolicyLora, PolicyTraining, load_policy
from trainer.reward import Progress, load_tokenizer, prompt_text, quiet

log = logging.getLogger(__name__)

REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of a pretrained adapter


def dpo_rows(tokenizer, pairs: Sequence[Pair]) -> list[dict[str, str]]:
    """Pairs as TRL's standard (text) preference format, tokenized as serving and the reward model read them.

    Each answer ends with the end-of-turn token, the one generation stops at (a conversational row
    would add the template's newline after it, a token the policy never emits).
    """
    return [
        {"prompt": prompt_text(tokenizer, pair.messages), "chosen": pair.chosen + tokenizer.eos_token,
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


@dataclass
class OfflineRun:
    """One DPO, KTO or SFT run: its trained policy, its size and how its loss went."""

    policy: torch.nn.Module
    seconds: float
    epochs: float
    steps: int
    samples_per_s: float
    metrics: dict[str, float]  # <kind>_loss (the mean), _loss_first, _loss_last, _epochs, _steps
    last: dict  # the last step's logs

    def training(self, metrics: dict[str, float]) -> PolicyTraining:
        return PolicyTraining(self.policy, self.seconds, self.samples_per_s, {**self.metrics, **metrics})


def fit_offline(
    kind: str,
    base_model: str,
    start_adapter: Path | None,
    lora: PolicyLora,
    config: DPOSection | KTOSection | SFTSection,
    work_dir: Path,
    seed: int,
    size: int,
    rows: Callable[[object], list[dict]],
    trainer_class: Callable[..., object],
    config_class: type,
    report: Callable[[int, int, dict], None] | None,
    **extra_args,
) -> OfflineRun:
    """Train the adapter in `start_adapter` (a fresh one when None) with a TRL trainer on `rows(tokenizer)`.

    `size` rows make the step count (offline_steps); `config_class` gets offline_args and
    `extra_args`. Only the trained adapter is kept: TRL's frozen "ref" copy of a pretrained
    adapter is deleted.
    """
    import warnings

    from datasets import Dataset

    tokenizer = load_tokenizer(base_model)
    torch.manual_seed(seed)
    policy = load_policy(base_model, start_adapter, lora)
    epochs, steps = offline_steps(config, size)
    args = config_class(**offline_args(config, work_dir, steps, seed), **extra_args)
    dataset = Dataset.from_list(rows(tokenizer))
    collected: list[dict] = []

    def keep(step: int, total: int, logs: dict) -> None:
        if "loss" in logs:
            collected.append(logs)
        if report:
            report(step, total, logs)

    started = time.monotonic()
    with warnings.catch_warnings():  # "the base model matches your adapter only when fresh": it is, or ref is a copy
        warnings.simplefilter("ignore")
        trainer = trainer_class(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[Progress(keep)])  # fmt: skip
    quiet(trainer)
    output = trainer.train()
    seconds = time.monotonic() - started
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if REF_ADAPTER in getattr(trained, "peft_config", {}):
        trained.delete_adapter(REF_ADAPTER)
    trained.set_adapter("default")
    trained.eval()
    first, last = (collected[0], collected[-1]) if collected else ({}, {})
    nan = float("nan")
    metrics = {
        f"{kind}_loss": float(output.training_loss),
        f"{kind}_loss_first": first.get("loss", nan),
        f"{kind}_loss_last": last.get("loss", nan),
        f"{kind}_epochs": epochs,
        f"{kind}_steps": float(steps),
    }
    log.info("%s: %d steps on %d rows (%.1f epochs) in %.0f s", kind.upper(), steps, size, epochs, seconds)
    return OfflineRun(trained, seconds, epochs, steps, steps * config.batch_size / max(seconds, 1e-9), metrics, last)


def run_dpo(
    base_model: str,
    start_adapter: Path | None,
    pairs: Sequence[Pair],
    config: DPOSection,
    lora: PolicyLora,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """DPO of the adapter in `start_adapter` (a fresh one when None) on `pairs`; the trained PeftModel."""
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    run = fit_offline(
        "dpo", base_model, start_adapter, lora, config, work_dir, seed, len(pairs),
        lambda tokenizer: dpo_rows(tokenizer, pairs),
        partial(DPOTrainer, ref_model=None),  # a PeftModel: TRL keeps the start adapter, frozen, as the reference
        DPOConfig, report, beta=config.beta,
    )  # fmt: skip
    nan = float("nan")
    return run.training({
        "dpo_accuracy_last": run.last.get("rewards/accuracies", nan),
        "dpo_margin_last": run.last.get("rewards/margins", nan),
        "dpo_pairs": float(len(pairs)),
        "dpo_beta": config.beta,
    })  # fmt: skip
