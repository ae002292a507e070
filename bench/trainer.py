"""Trainer: one default round on the default model, timed end to end (JSON).

Starts its own broker and publishes traffic as serving and users would: each prompt answered twice
by the default policy itself (sampled at temperature 1, as serving does by default), and one piece
of feedback per completion chosen by a hidden preference (by default `flywheel simulate`'s
`concise`): a comparison, a thumbs up on the preferred answer, or a thumbs down on the other. The
trainer ingests it and runs one round with the default settings; the report gives reward-model
examples/s, PPO samples/s, each phase's seconds, peak memory, the evaluation, the
feedback-to-policy latency, and the round time against the 10-minute target.

    python bench/trainer.py [--completions N] [--preference SPEC] [--seed N] [--model DIR] [--out FILE]
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


def sample_traffic(model: str, count: int, preference, answer_tokens: int, seed: int) -> tuple[list, dict]:
    """`count` completions of two answers sampled from `model`, each with one piece of feedback by `preference`.

    Returns the (topic, payload) records and counts; a completion whose answers the preference
    cannot tell apart gets no feedback (a tie states nothing).
    """
    from transformers import AutoModelForCausalLM

    from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
    from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
    from flywheel.v1 import events_pb2
    from tests.trainer.synthetic import TOPICS
    from trainer.evaluate import sample_answers
    from trainer.hardware import compute_dtype
    from trainer.reward import load_tokenizer, prompt_ids

    tokenizer = load_tokenizer(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=compute_dtype())
    prompts = [f"Tell me about {TOPICS[i % len(TOPICS)]} ({i // len(TOPICS)})." for i in range(count)]
    answers: list[str] = []
    for start in range(0, 2 * count, 32):  # both answers of a prompt side by side, 16 prompts a batch
        chunk = [prompt_ids(tokenizer, (("user", prompts[i // 2]),)) for i in range(start, min(start + 32, 2 * count))]
        answers += sample_answers(policy, tokenizer, chunk, answer_tokens, 1.0, seed + start).answers
        logging.info("sampled %d of %d answers", len(answers), 2 * count)
    records, counts = [], {"comparison": 0, "up": 0, "down": 0, "tie": 0}
    for i, prompt in enumerate(prompts):
        completion = events_pb2.Completion(
            event_id=new_event_id(), created_at=timestamp_now(), schema_version=SCHEMA_VERSION,
            completion_id=f"bench-{seed}-{i}", user_id=f"user-{i % 7}", policy_version="base", model="bench",
        )  # fmt: skip
        completion.messages.add(role="user", content=prompt)
        pair = answers[2 * i : 2 * i + 2]
        for index, text in enumerate(pair):
            completion.choices.add(index=index, text=text, finish_reason="stop")
        records.append((TOPIC_COMPLETIONS, completion.SerializeToString()))
        scores = [preference.score(prompt, text) for text in pair]
        if scores[0] == scores[1]:
            counts["tie"] += 1
            continue
        good = 0 if scores[0] > scores[1] else 1
        kind = ("comparison", "up", "down")[i % 3]
        counts[kind] += 1
        feedback = events_pb2.FeedbackEvent(
            event_id=new_event_id(), created_at=timestamp_now(), schema_version=SCHEMA_VERSION,
            completion_id=completion.completion_id, user_id=completion.user_id, policy_version="base",
            idempotency_key=new_event_id(),
        )  # fmt: skip
        if kind == "comparison":
            feedback.comparison.ranking.extend([good, 1 - good])
        elif kind == "up":
            feedback.thumbs.choice_index, feedback.thumbs.rating = good, events_pb2.RATING_UP
        else:
            feedback.thumbs.choice_index, feedback.thumbs.rating = 1 - good, events_pb2.RATING_DOWN
        records.append((TOPIC_FEEDBACK, feedback.SerializeToString()))
    return records, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=96, help="completions, each with one piece of feedback")
    parser.add_argument("--preference", default="concise", help="the users' hidden preference (as flywheel simulate)")
    parser.add_argument("--answer-tokens", type=int, default=128, help="longest sampled answer in the traffic")
    parser.add_argument("--seed", type=int, default=11, help="seed of the traffic's sampled answers")
    parser.add_argument("--model", help="base policy (default: the converted default model)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    import torch

    from flywheel.broker import Broker
    from flywheel.kafka import make_producer
    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings, TrainerSettings
    from flywheel.simulate.preferences import load_preference
    from tests.conftest import free_port
    from trainer.service import TrainerService

    (ROOT / ".flywheel").mkdir(exist_ok=True)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    preference = load_preference(args.preference)
    torch.set_num_threads(TrainerSettings().torch_threads)  # as the trainer will (serving's sampling, stood in for)
    records, feedback_counts = sample_traffic(model, args.completions, preference, args.answer_tokens, args.seed)
    broker = Broker(port=free_port()).start()
    try:
        producer = make_producer(broker.bootstrap)
        for topic, payload in records:
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
        "preference": preference.name,
        "seed": args.seed,
        "feedback": feedback_counts,
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
