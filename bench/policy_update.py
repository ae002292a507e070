"""PPO against GRPO: what one round's policy update costs on the default model, side by side (JSON).

Both algorithms run as a round runs them (`trainer/ppo.py` run_ppo, `trainer/grpo.py` run_grpo,
default settings but the number of updates) on the same prompts and the same reward model,
alternating over `--repeats` so drift on the machine falls on both. Each update samples 16
answers: PPO 16 prompts once and 4 epochs over them with its critic, GRPO 4 prompts 4 times and
one pass, no critic. The report gives seconds per update and per sampled answer for each, and
GRPO's speed as a ratio to PPO's, with the range over the repeats.

The reward model's score head is untrained (the base backbone and a fresh head): this measures
cost, not what either algorithm learns; the learning benchmark (bench/learning.py --set
algorithm=grpo) measures that.

    python bench/policy_update.py [--updates 2] [--repeats 2] [--threads 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import PROMPTS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base policy (default: the converted default model)")
    parser.add_argument("--updates", type=int, default=2, help="policy updates per algorithm and repeat")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the two algorithms, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the trainer's default: 1)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings, TrainerSettings
    from trainer.grpo import run_grpo
    from trainer.ppo import PolicyLora, run_ppo
    from trainer.reward import RewardModel, base_classifier, load_tokenizer

    torch.set_num_threads(args.threads)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    settings = TrainerSettings()
    ppo = settings.ppo.model_copy(update={"steps": args.updates})
    grpo = settings.grpo.model_copy(update={"steps": args.updates})
    tokenizer = load_tokenizer(model)
    reward = RewardModel(base_classifier(model, tokenizer).eval(), tokenizer, settings.reward.max_length)
    prompts = [(("user", prompt),) for prompt in PROMPTS]
    per_update: dict[str, list[float]] = {"ppo": [], "grpo": []}
    with tempfile.TemporaryDirectory(prefix="flywheel-policy-update-") as work:
        for repeat in range(args.repeats):
            for name in ("ppo", "grpo"):
                started = time.monotonic()
                if name == "ppo":
                    run_ppo(model, None, reward, prompts, ppo, Path(work) / f"ppo-{repeat}", seed=repeat)
                else:
                    run_grpo(model, None, reward, prompts, grpo, PolicyLora.of(settings.ppo),
                             Path(work) / f"grpo-{repeat}", seed=repeat)  # fmt: skip
                seconds = (time.monotonic() - started) / args.updates
                per_update[name].append(seconds)
                print(f"repeat {repeat}: {name}: {seconds:.1f} s per update", file=sys.stderr)
    samples = {"ppo": ppo.batch_size, "grpo": grpo.prompts_per_step * grpo.group_size}
    ratios = [p / g for p, g in zip(per_update["ppo"], per_update["grpo"], strict=True)]
    report = {
        "model": model,
        "updates": args.updates,
        "repeats": args.repeats,
        "threads": args.threads,
        "answers_per_update": samples,
        "seconds_per_update": {name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                               for name, v in per_update.items()},
        "answers_per_s": {name: samples[name] / statistics.median(v) for name, v in per_update.items()},
        "grpo_speed_over_ppo": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "note": "includes each run's model loading; the reward model's head is untrained (cost, not learning)",
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
