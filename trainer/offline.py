"""Offline uses of the trainer's data: export as JSONL, and the reward model's accuracy on a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from flywheel.hh import MalformedDialogue, split_pair
from flywheel.settings import TrainerSettings
from flywheel.store import ModelStore
from trainer.context import REWARD_MODEL_KEY
from trainer.dataset import DatasetStore
from trainer.pairs import Pair, build_pairs
from trainer.records import prompt_key
from trainer.reward import load_reward_model
from trainer.round import heldout_slice


def _hh(messages, answer: str) -> str:
    turns = [*messages, ("assistant", answer)]
    return "".join(f"\n\n{'Human' if role == 'user' else 'Assistant'}: {content}" for role, content in turns)


def export_dataset(settings: TrainerSettings, out: Path) -> dict[Path, int]:
    """pairs.jsonl (chosen/rejected in the HH format, plus messages and split) and events.jsonl."""
    if not settings.dataset_path.exists():
        raise FileNotFoundError(f"no trainer dataset at {settings.dataset_path}")
    store = DatasetStore(settings.dataset_path)
    out.mkdir(parents=True, exist_ok=True)
    rated, ranked, external = store.rated_responses(), store.ranked_completions(), store.external_pairs()
    anchors = store.unrated_choices({r.prompt_key for r in rated})
    pairs = build_pairs(rated, ranked, external, anchors, heldout_slice(store, settings), store.corrections())
    written: dict[Path, int] = {}
    path = out / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for split, items in (("train", pairs.train), ("heldout", pairs.heldout)):
            for pair in items:
                row = {
                    "chosen": _hh(pair.messages, pair.chosen),
                    "rejected": _hh(pair.messages, pair.rejected),
                    "prompt": [{"role": r, "content": c} for r, c in pair.messages],
                    "chosen_answer": pair.chosen,
                    "rejected_answer": pair.rejected,
                    "source": pair.source,
                    "split": split,
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    written[path] = len(pairs)
    path = out / "events.jsonl"
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for event in store.raw_events():
            handle.write(json.dumps(event, ensure_ascii=False) + "\n")
            count += 1
    written[path] = count
    store.close()
    return written


def read_eval_pairs(path: Path) -> tuple[list[Pair], int]:
    """Pairs of a chosen/rejected JSONL file (HH dialogues, or prompt + answers); and lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    pairs, skipped = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
                if isinstance(row.get("prompt"), str):
                    messages = [{"role": "user", "content": row["prompt"]}]
                    chosen, rejected = row["chosen"], row["rejected"]
                else:
                    messages, chosen, rejected = split_pair(row["chosen"], row["rejected"])
            except (ValueError, KeyError, TypeError, AttributeError, MalformedDialogue):
                skipped += 1
                continue
            msgs = tuple((m["role"], m["content"]) for m in messages)
            pairs.append(Pair(prompt_key(msgs), msgs, chosen, rejected, "file", 0))
    return pairs, skipped


class RewardModelEvaluation(TypedDict):
    """`flywheel rm-eval`'s result: a dict, as the CLI prints it as JSON."""

    reward_model: str  # the reward model in use (its name in the reward-model store)
    pairs: int  # pairs scored
    skipped: int  # lines of the file that were not a usable pair
    accuracy: float  # share of pairs whose chosen answer scores above the rejected one (ties count half)


def evaluate_reward_model(settings: TrainerSettings, base_model: str, path: Path) -> RewardModelEvaluation:
    pairs, skipped = read_eval_pairs(path)
    if not pairs:
        raise ValueError(f"{path} has no usable chosen/rejected pairs ({skipped} lines skipped)")
    name = DatasetStore(settings.dataset_path).get_state(REWARD_MODEL_KEY) if settings.dataset_path.exists() else ""
    if not name:
        raise FileNotFoundError("no reward model has been trained yet (run `flywheel train --once --reward-only`)")
    store = ModelStore(settings.reward_store_dir)
    store.verify(name)
    model = load_reward_model(base_model, store.path(name), settings.reward.max_length)
    return RewardModelEvaluation(reward_model=name, pairs=len(pairs), skipped=skipped, accuracy=model.accuracy(pairs))
