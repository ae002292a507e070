"""Reward-model recipes on real human preferences: accuracy on HH pairs the model never saw (JSON).

The evidence behind the first reward model's defaults. The HH file's usable pairs are shuffled with
`--seed`; the first `--train` of them train, the rest judge; each recipe is a set of `reward.*`
settings over the defaults, trained by the trainer's own `train_reward_model` (TRL RewardTrainer)
on the default model, one after another.

    python bench/reward_recipe.py [--data FILE] [--train N] [--seed N] [--threads N]
        [--recipe 'epochs=1,learning_rate=1e-4' ...] [--out FILE]

Without --recipe it runs the defaults and a small grid around them (about 5-10 minutes each here).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1200.jsonl"
GRID = [
    "",  # the defaults
    "epochs=1",
    "epochs=1,learning_rate=1e-4",
    "epochs=1,lora_layers=16",
]


SHOWN = ("epochs", "learning_rate", "max_length", "lora_rank", "lora_layers", "batch_size")


def parse_recipe(text: str) -> dict[str, object]:
    recipe: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"reward_recipe: {item!r} is not name=value")
        recipe[name.strip()] = json.loads(value) if value.strip()[0].isdigit() or value in ("true", "false") else value
    return recipe


def split(path: Path, train: int, seed: int):
    from trainer.offline import read_eval_pairs

    pairs, skipped = read_eval_pairs(path)
    random.Random(seed).shuffle(pairs)
    if len(pairs) <= train:
        raise SystemExit(f"reward_recipe: {path} has {len(pairs)} usable pairs; --train {train} leaves none to judge")
    return pairs[:train], pairs[train:], skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="", help="base model (default: the converted default)")
    parser.add_argument("--recipe", action="append", help="reward.* overrides, e.g. 'epochs=1,learning_rate=1e-4'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from flywheel.models import resolve_model
    from flywheel.settings import RewardSection, TrainerSettings
    from trainer.reward import train_reward_model

    torch.set_num_threads(args.threads)
    model = resolve_model(args.model, TrainerSettings().models_dir)
    train, unseen, skipped = split(args.data, args.train, args.seed)
    results = []
    for text in args.recipe or GRID:
        recipe = parse_recipe(text)
        config = RewardSection(**{**RewardSection().model_dump(), **recipe})
        with tempfile.TemporaryDirectory(prefix="flywheel-rm-") as work:
            started = time.monotonic()
            training = train_reward_model(model, train, config, Path(work), seed=args.seed)
            accuracy = training.reward_model.accuracy(unseen)
        result = {
            "recipe": recipe or "defaults",
            "settings": {k: getattr(config, k) for k in SHOWN},
            "train_pairs": len(train),
            "unseen_pairs": len(unseen),
            "unseen_accuracy": round(accuracy, 4),
            "train_seconds": round(training.seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "train_loss": round(training.loss, 4),
        }
        logging.getLogger("bench.reward_recipe").info("%s", json.dumps(result))
        results.append(result)
    report = {"data": str(args.data), "seed": args.seed, "skipped_lines": skipped, "threads": args.threads,
              "results": results}  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
