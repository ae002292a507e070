"""The reward model: a scalar head on the policy's backbone, trained with TRL's RewardTrainer.

It shares the policy's tokenizer so PPO can score rollouts token for token. A dialogue is scored
at its final <|im_end|>, the same position TRL's PPO reads the score at, and long dialogues
keep their end (the answer) when truncated. Only the LoRA adapter and the head are saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback

from flywheel.settings import RewardSection
from trainer.hardware import compute_dtype, device, trainer_args
from trainer.pairs import Messages, Pair
from trainer.records import RAW_PROMPT_ROLE

log = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"  # the chat template ends turns with <|im_end|>, the tokenizer's own pad


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """The policy's tokenizer with a pad distinct from its end-of-turn token, padding on the left."""
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if PAD_TOKEN in tokenizer.get_vocab():
            tokenizer.pad_token = PAD_TOKEN
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return tokenizer


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The prompt as serving gave it to the model: the chat template up to the assistant's turn
    header, or the text serving recorded (a /v1/completions prompt, a chat with tools), special
    tokens included."""
    if is_raw(messages):
        return messages[0][1]
    chat = [{"role": role, "content": content} for role, content in messages]
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


def is_raw(messages: Messages) -> bool:
    return len(messages) == 1 and messages[0][0] == RAW_PROMPT_ROLE


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """Token ids of a prompt as serving encoded it; a recorded text holds its special tokens already."""
    return tokenizer.encode(prompt_text(tokenizer, messages), add_special_tokens=False)


def dialogue_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages, answer: str, max_length: int) -> list[int]:
    """Prompt + answer + end of turn, truncated from the left to `max_length` tokens."""
    ids = prompt_ids(tokenizer, messages) + tokenizer.encode(answer, add_special_tokens=False)
    ids.append(tokenizer.eos_token_id)
    return ids[-max_length:]


@dataclass
class RewardModel:
    """A loaded reward model and how it reads dialogues."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    max_length: int

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[list[int]], batch_size: int = 16) -> list[float]:
        self.model.eval()
        scores: list[float] = []
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding per batch
        by_index: dict[int, float] = {}
        for start in range(0, len(order), batch_size):
            chunk = [sequences[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids in chunk)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=self.model.device)
            mask = (input_ids != pad).long()
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float()
            for i, value in zip(order[start : start + batch_size], logits.tolist(), strict=True):
                by_index[i] = value
        scores = [by_index[i] for i in range(len(sequences))]
        return scores

    def score(self, messages: Sequence[Messages], answers: Sequence[str]) -> list[float]:
        ids = [dialogue_ids(self.tokenizer, m, a, self.max_length) for m, a in zip(messages, answers, strict=True)]
        return self.score_ids(ids)

    def correct(self, pairs: Sequence[Pair]) -> list[float]:
        """Per pair: 1 when the chosen answer scores above the rejected one, 0.5 for a tie, else 0."""
        chosen = self.score([p.messages for p in pairs], [p.chosen for p in pairs])
        rejected = self.score([p.messages for p in pairs], [p.rejected for p in pairs])
        return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]

    def accuracy(self, pairs: Sequence[Pair]) -> float:
        """Share of pairs whose chosen answer scores above the rejected one (ties count half)."""
        return sum(self.correct(pairs)) / len(pairs) if pairs else float("nan")


def end_of_turn_scores(
    reward: RewardModel, prompts: Sequence[list[int]], answers: Sequence[list[int]], eos: int, penalty: float
) -> list[float]:
    """The reward model's score of each prompt + answer, read at an end of turn (appended to an answer
    cut at the length limit, which also loses `penalty`)."""
    sequences, cut = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        ended = bool(answer) and answer[-1] == eos
        sequences.append((prompt + answer + ([] if ended else [eos]))[-reward.max_length :])
        cut.append(not ended)
    scores = reward.score_ids(sequences)
    return [score - penalty * was_cut for score, was_cut in zip(scores, cut, strict=True)]


def base_classifier(base_model: str, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """The base model with an untrained scalar head (what a reward model starts from), on the trainer's device."""
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=compute_dtype())
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device())


def load_reward_model(base_model: str, adapter_dir: Path, max_length: int) -> RewardModel:
    """Base backbone + the saved adapter and head (merged for fast scoring), or a full model."""
    from peft import PeftModel

    tokenizer = load_tokenizer(base_model)
    if not (adapter_dir / "adapter_config.json").exists():
        model = AutoModelForSequenceClassification.from_pretrained(adapter_dir, dtype=compute_dtype())
        return RewardModel(model.to(device()).eval(), tokenizer, max_length)
    model = PeftModel.from_pretrained(base_classifier(base_model, tokenizer), adapter_dir)
    return RewardModel(model.merge_and_unload().eval(), tokenizer, max_length)


def linear_names(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers inside the transformer blocks (what "all-linear" would pick)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and ".layers." in name})  # fmt: skip


def top_layers(num_layers: int, n: int) -> list[int]:
    """The indices of the top `n` of `num_layers` transformer layers (all of them when n is 0)."""
    return list(range(max(0, num_layers - n), num_layers)) if n else list(range(num_layers))


def quiet(trainer) -> None:
    """Drop the callbacks that print to stdout (the CLI's stdout carries JSON); our loggers report."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


class Progress(TrainerCallback):
    def __init__(self, report: Callable[[int, int, dict], None]) -> None:
        self.report = report

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.report(state.global_step, state.max_steps, dict(logs or {}))


@dataclass
class RewardTraining:
    reward_model: RewardModel
    peft_model: torch.nn.Module
    seconds: float
    examples_per_s: float
    loss: float


def train_reward_model(
    base_model: str,
    pairs: Sequence[Pair],
    config: RewardSection,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
    start_from: Path | None = None,
    epochs: float | None = None,
) -> RewardTraining:
    """Bradley-Terry training of a LoRA reward model on `pairs` (TRL RewardTrainer; device, dtype: trainer/hardware.py).

    A fresh adapter, or the saved one in `start_from` trained further (its head included).
    """
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(base_model)
    rows = []
    for p in pairs:
        chosen = dialogue_ids(tokenizer, p.messages, p.chosen, config.max_length)
        rejected = dialogue_ids(tokenizer, p.messages, p.rejected, config.max_length)
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "length": max(len(chosen), len(rejected))})
    epochs = config.epochs if epochs is None else epochs
    model = base_classifier(base_model, tokenizer)
    peft_config = None
    if start_from is not None and (start_from / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(model, start_from, is_trainable=True)
    elif start_from is not None:  # a fully fine-tuned reward model (lora_rank 0)
        model = AutoModelForSequenceClassification.from_pretrained(start_from, dtype=compute_dtype()).to(device())
    elif config.lora_rank > 0:
        peft_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            target_modules=linear_names(model),
            layers_to_transform=top_layers(model.config.num_hidden_layers, config.lora_layers),
            task_type="SEQ_CLS",
            modules_to_save=["score"],
        )
    args = RewardConfig(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=epochs,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=max(1, int(0.05 * epochs * len(rows) / config.batch_size)),
        gradient_checkpointing=False,  # TRL turns it on; here memory is plenty and recomputing costs 2x
        max_length=None,  # rows are truncated (from the left) already; TRL would drop long ones
        pad_to_multiple_of=32,  # few distinct shapes: oneDNN builds kernels per shape
        # Batches of like length (shuffled groups of 50 batches, sorted within): a step pads to its
        # longest dialogue, and random batches of HH pairs padded to 2.1x their real tokens.
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,  # keeps "length" for the sampler; TRL's collator reads only the ids
        logging_steps=5,
        **trainer_args(seed),
    )
    callbacks = [Progress(report)] if report else None
    started = time.monotonic()
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    quiet(trainer)
    output = trainer.train()
    seconds = time.monotonic() - started
    trained = trainer.model
    trained.eval()
    log.info("reward model %s on %d pairs in %.0f s (loss %.3f)", "trained further" if start_from else "trained",
             len(rows), seconds, output.training_loss)  # fmt: skip
    return RewardTraining(
        reward_model=RewardModel(trained, tokenizer, config.max_length),
        peft_model=trained,
        seconds=seconds,
        examples_per_s=len(rows) * epochs / max(seconds, 1e-9),
        loss=float(output.training_loss),
    )
