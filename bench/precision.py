"""Trainer precision: the same passes in bfloat16 and float32 side by side on this machine (JSON).

Times what a round does with the default model (or `--model`): a policy forward and backward
with a LoRA adapter (PPO, DPO), a reward-classifier forward and backward, and sampled
generation (rollouts, evaluation). Reports seconds per pass for each dtype and the bf16/fp32 ratio.

    python bench/precision.py [--model DIR] [--tokens 128] [--batch 8] [--repeats 2] [--threads N]
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


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(model: str, dtype, batch: int, tokens: int, repeats: int) -> dict[str, list[float]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    ids = torch.randint(0, 1000, (batch, tokens))
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=dtype),
                            LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))  # fmt: skip

    def policy_step():
        policy(input_ids=ids).logits.float().log_softmax(-1).mean().backward()

    classifier = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype, num_labels=1)

    def classifier_step():
        classifier(input_ids=ids).logits.float().sum().backward()

    def generate():
        with torch.no_grad():
            policy.generate(input_ids=ids[:, :32], attention_mask=torch.ones_like(ids[:, :32]), do_sample=True,
                            max_new_tokens=16, min_new_tokens=16, pad_token_id=0)  # fmt: skip

    return {"policy_lora_forward_backward": timed(policy_step, repeats),
            "classifier_forward_backward": timed(classifier_step, repeats),
            "generate_16_tokens": timed(generate, repeats)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="model directory (default: the converted default)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    from flywheel.models import prepare_default_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or str(prepare_default_model(ROOT / ".flywheel" / "models", show_progress=False))
    results = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        results[name] = measure(model, dtype, args.batch, args.tokens, args.repeats)
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # progress: bf16 takes minutes
    median = {dtype: {step: statistics.median(s) for step, s in steps.items()} for dtype, steps in results.items()}
    ratios = {step: median["bfloat16"][step] / value for step, value in median["float32"].items()}
    report = {"benchmark": "precision", "model": model, "batch": args.batch, "tokens": args.tokens,
              "threads": torch.get_num_threads(), "seconds": results,
              "bf16_over_fp32": ratios}  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
