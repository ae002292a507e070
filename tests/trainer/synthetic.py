"""Synthetic traffic with a hidden, consistent preference, as protobuf records for the trainer.

The rule: an answer that is polite ("please", "thank you") beats a curt one. Each completion has
two choices, one of each kind; feedback is a comparison, a pair of thumbs, or a lone thumb.
"""

from __future__ import annotations

import random

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


def completion(i: int, rng: random.Random, version: str = "base") -> events_pb2.Completion:
    topic = TOPICS[i % len(TOPICS)]
    event = events_pb2.Completion(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        completion_id=f"cmpl-{i}",
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
    elif kind == "up":
        fb.thumbs.choice_index = good
        fb.thumbs.rating = events_pb2.RATING_UP
    else:
        fb.thumbs.choice_index = 1 - good
        fb.thumbs.rating = events_pb2.RATING_DOWN
    return fb


def traffic(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` completions, each with one piece of feedback, as (topic, payload) records."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        event = completion(i, rng)
        kind = ("comparison", "up", "down")[i % 3]
        records.append((TOPIC_COMPLETIONS, event.SerializeToString()))
        records.append((TOPIC_FEEDBACK, feedback(event, kind).SerializeToString()))
    return records
