"""Policy update cost by LoRA layout: one optimiser step's forward and backward, side by side (JSON).

Every policy algorithm (PPO, DPO, KTO, SFT) spends its time in forward and backward passes of the
policy's LoRA model. With LoRA on every layer the backward pass runs through all of them; with
LoRA on the top N layers only (`ppo.lora_layers`) it stops below them, since nothing underneath
needs a gradient. This benchmark times one step (batch x tokens of real prompts and answers) for
each layout in turn, several rounds alternating, at the trainer's thread count, and reports
steps/s with ratios against LoRA on every layer.

    python bench/policy_step.py [--layers 0,8,4] [--batch 8] [--tokens 128] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def step(policy, optimizer, ids) -> None:
    """One optimiser step of the language-modelling loss on `ids`: a forward, a backward, an update."""
    loss = policy(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base policy (default: the converted default model)")
    parser.add_argument("--layers", default="0,8,4", help="LoRA layouts: top N layers (0: every layer)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per layout and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the layouts, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the trainer's default: 1)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings
    from trainer.hardware import compute_dtype
    from trainer.ppo import PolicyLora, load_policy

    torch.set_num_threads(args.threads)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    layouts = [int(n) for n in args.layers.split(",")]
    ids = torch.randint(100, 20000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    times: dict[int, list[float]] = {n: [] for n in layouts}
    trainable: dict[int, int] = {}
    for repeat in range(args.repeats):
        for layers in layouts:
            torch.manual_seed(0)
            policy = load_policy(model, None, PolicyLora(16, layers))
            trainable[layers] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
            optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)

            step(policy, optimizer, ids)  # warm-up
            started = time.perf_counter()
            for _ in range(args.steps):
                step(policy, optimizer, ids)
            seconds = (time.perf_counter() - started) / args.steps
            times[layers].append(seconds)
            print(f"repeat {repeat}: lora_layers={layers}: {seconds:.2f} s/step", file=sys.stderr)
            del policy, optimizer
    baseline = statistics.median(times[layouts[0]])
    report = {
        "benchmark": "policy_step",
        "model": model,
        "dtype": str(compute_dtype()),
        "threads": args.threads,
        "batch": args.batch,
        "tokens": args.tokens,
        "layouts": {
            str(n): {
                "seconds_per_step": times[n],
                "median_s": statistics.median(times[n]),
                "trainable_parameters": trainable[n],
                "speedup_vs_first": baseline / statistics.median(times[n]),
                "speedup_range": [min(times[layouts[0]]) / max(times[n]), max(times[layouts[0]]) / min(times[n])],
            }
            for n in layouts
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
