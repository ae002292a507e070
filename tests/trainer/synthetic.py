"""Synthetic traffic with a hidden, consistent preference, as protobuf records for the trainer.

The rule: an answer that is polite ("please", "thank you") beats a curt one. Each completion has
two choices, one of each kind; feedback is a comparison, a pair of thumbs, or a lone thumb.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.v1 import events_pb2

TOPICS = [
    "the sea",
    "a cat",
    "trains",
    "the moon",
    "bread",
    "music",
    "rain",
    "a garden",
    "chess",
    "the city",
    "winter",
    "a river",
    "coffee",
    "books",
    "bicycles",
    "stars",
    "mountains",
    "an apple",
    "the wind",
    "a bridge",
]
POLITE = [
    "Thank you for asking! {t} is lovely, please enjoy it.",
    "Please let me help: {t} is wonderful, thank you.",
    "Thanks so much! I would be glad to tell you about {t}, please ask more.",
]
CURT = ["{t}. Whatever.", "No. {t} is boring.", "Go away, {t} is not worth it."]


def completion(i: int, rng: random.Random, version: str = "base", prefix: str = "cmpl") -> events_pb2.Completion:
    topic = TOPICS[i % len(TOPICS)]
    event = events_pb2.Completion(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        completion_id=f"{prefix}-{i}",
        user_id=f"user-{i % 7}",
        policy_version=version,
        model="tiny",
    )
    event.messages.add(role="user", content=f"Tell me about {topic} ({i // len(TOPICS)}).")
    texts = [rng.choice(POLITE).format(t=topic.capitalize()), rng.choice(CURT).format(t=topic.capitalize())]
    if rng.random() < 0.5:
        texts.reverse()
    for index, text in enumerate(texts):
        event.choices.add(index=index, text=text, finish_reason="stop")
    return event


def polite_index(event: events_pb2.Completion) -> int:
    return 0 if "please" in event.choices[0].text.lower() else 1


def feedback(event: events_pb2.Completion, kind: str, **extra) -> events_pb2.FeedbackEvent:
    good = polite_index(event)
    fb = events_pb2.FeedbackEvent(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        completion_id=event.completion_id,
        user_id=event.user_id,
        policy_version=event.policy_version,
        idempotency_key=extra.get("key", new_event_id()),
    )
    if kind == "comparison":
        fb.comparison.ranking.extend([good, 1 - good])
    elif kind == "correction":  # the curt answer, rewritten politely
        fb.correction.choice_index = 1 - good
        fb.correction.text = extra.get("text", "Thank you, please let me rewrite that kindly.")
    elif kind == "up":
        fb.thumbs.choice_index = good
        fb.thumbs.rating = events_pb2.RATING_UP
    else:
        fb.thumbs.choice_index = 1 - good
        fb.thumbs.rating = events_pb2.RATING_DOWN
    return fb


def traffic(count: int, seed: int = 0, corrections: int = 0) -> list[tuple[str, bytes]]:
    """`count` completions, each with one piece of feedback, as (topic, payload) records.

    The first `corrections` completions also get their curt answer rewritten politely.
    """
    rng = random.Random(seed)
    records = []
    for i in range(count):
        event = completion(i, rng, prefix=f"cmpl-s{seed}")
        kind = ("comparison", "up", "down")[i % 3]
        records.append((TOPIC_COMPLETIONS, event.SerializeToString()))
        records.append((TOPIC_FEEDBACK, feedback(event, kind).SerializeToString()))
        if i < corrections:
            text = rng.choice(POLITE).format(t=TOPICS[i % len(TOPICS)].capitalize())
            records.append((TOPIC_FEEDBACK, feedback(event, "correction", text=text).SerializeToString()))
    return records


def build_taught_policy(target: Path, steps: int = 60, seed: int = 0) -> Path:
    """A tiny random Llama taught to answer like the synthetic traffic: polite or curt, half each.

    A random policy writes noise that no reward model can rank; this one writes both kinds of
    answer, so PPO has a real choice to shift toward the hidden preference.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.models import build_tiny_model, is_prepared, publish_dir

    if is_prepared(target):
        return target
    base = build_tiny_model(target.parent / f"{target.name}-random", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = []
        for _ in range(16):
            event = completion(rng.randrange(10_000), rng)
            chat = [{"role": "user", "content": event.messages[0].content},
                    {"role": "assistant", "content": event.choices[rng.randrange(2)].text}]  # fmt: skip
            batch.append(tokenizer.apply_chat_template(chat, tokenize=False).rstrip("\n"))
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tmp = Path(tempfile.mkdtemp(prefix=".taught-", dir=target.parent))
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish_dir(tmp, target)
    return target
