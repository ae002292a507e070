"""Kafka clients built one way for every process (kafka-python).

Settings follow the local broker's measured quirks (DESIGN.md): short session timeouts so a
new group joins fast, "earliest" offsets, topics created by an admin call, never auto-created.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
)

from flywheel.settings import TOPICS

log = logging.getLogger(__name__)

# Errors about one record that every retry meets again (the broker will never take it): a
# producer dead-letters that record and goes on, rather than retrying the events behind it forever.
UNDELIVERABLE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError, CorruptRecordError)


def make_producer(bootstrap: str, **overrides: object) -> KafkaProducer:
    """An idempotent, acks=all producer that fails fast when the broker is unreachable."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 262_144,
        "retries": 5,
        "max_block_ms": 5_000,
        "bootstrap_timeout_ms": 5_000,
        "request_timeout_ms": 10_000,
        "reconnect_backoff_max_ms": 2_000,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def close_quietly(producer: KafkaProducer | None) -> None:
    """Close a producer that may be broken (after a failure), without waiting or raising."""
    if producer is None:
        return
    try:
        producer.close(timeout=0)
    except KafkaError:
        pass


def make_consumer(bootstrap: str, group_id: str | None, topics: Iterable[str], **overrides: object) -> KafkaConsumer:
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 2_000,
        "consumer_timeout_ms": 1_000,
    }
    options.update(overrides)
    return KafkaConsumer(*topics, **options)


def create_topics(
    bootstrap: str, topics: Iterable[str] = TOPICS, partitions: int = 1, timeout_s: float = 30.0
) -> list[str]:
    """Create the missing topics by an admin call, retrying until the broker answers; return them."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout_s:.0f} s") from exc
            time.sleep(0.3)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name=topic, num_partitions=partitions, replication_factor=1)
            for topic in topics
            if topic not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        admin.close()
