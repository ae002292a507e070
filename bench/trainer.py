"""Trainer: one default round on the default model, timed end to end (JSON).

Starts its own broker, publishes synthetic traffic with a hidden preference (polite answers beat
curt ones; ≥ 64 new pairs), lets the trainer ingest it and run one round with the default
settings, and reports: reward-model examples/s, PPO samples/s, each phase's seconds, peak memory,
the feedback-to-policy latency, and the round time against the 10-minute target.

    python bench/trainer.py [--completions N] [--model DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_ROUND_S = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=96, help="completions, each with one piece of feedback")
    parser.add_argument("--model", help="base policy (default: the converted default model)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    from flywheel.broker import Broker
    from flywheel.kafka import make_producer
    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings, TrainerSettings
    from tests.conftest import free_port
    from tests.trainer.synthetic import traffic
    from trainer.service import TrainerService

    (ROOT / ".flywheel").mkdir(exist_ok=True)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    broker = Broker(port=free_port()).start()
    try:
        producer = make_producer(broker.bootstrap)
        for topic, payload in traffic(args.completions, seed=11):
            producer.send(topic, value=payload)
        producer.flush()
        producer.close()
        with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
            settings = TrainerSettings(data_dir=Path(tmp), kafka_bootstrap=broker.bootstrap)
            service = TrainerService(settings, model)
            load_before = os.getloadavg()
            started = time.monotonic()
            service.catch_up()
            ingest_s = time.monotonic() - started
            result = service.run_round()
            round_s = time.monotonic() - started - ingest_s
            service.stop()
    finally:
        broker.stop()
    metrics = result.metrics
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report = {
        "benchmark": "trainer",
        "model": model,
        "completions": args.completions,
        "outcome": result.outcome,
        "reason": result.reason,
        "version": result.version,
        "pairs_train": metrics.get("pairs_train"),
        "pairs_heldout": metrics.get("pairs_heldout"),
        "ingest_seconds": ingest_s,
        "round_seconds": round_s,
        "phase_seconds": {k.removeprefix("seconds_"): v for k, v in metrics.items() if k.startswith("seconds_")},
        "reward_model_examples_per_s": metrics.get("reward_examples_per_s"),
        "reward_model_heldout_accuracy": metrics.get("reward_accuracy"),
        "ppo_samples_per_s": metrics.get("ppo_samples_per_s"),
        "ppo": {k: v for k, v in metrics.items() if k.startswith("ppo_")},
        "evaluation": {k: v for k, v in metrics.items() if k.startswith("eval_")},
        "feedback_to_policy_seconds": metrics.get("feedback_to_policy_seconds"),
        "peak_rss_gib": peak_rss_gib,
        # Other work on this 2-core machine slows a round down: the load averages (1, 5, 15 min) around it.
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "ratios": {"round_over_target": round_s / TARGET_ROUND_S},
        "targets": {"round_seconds": TARGET_ROUND_S},
        "meets_targets": round_s <= TARGET_ROUND_S and result.outcome == "published",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
