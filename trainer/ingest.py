"""Kafka → the dataset store. Offsets are committed only after the store has committed the rows.

A crash between the two replays a batch on restart, which the store ignores (idempotent by event
id), so nothing is lost and nothing counts twice. The local broker forgets committed offsets
when it restarts; the consumer then starts from the earliest record again, which is safe too.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from flywheel.kafka import make_consumer
from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from trainer.dataset import DatasetStore, IngestResult
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class Ingestor:
    """Polls both topics and stores what it gets; `poll` is one batch, `catch_up` drains them."""

    def __init__(self, consumer: KafkaConsumer, store: DatasetStore, metrics: TrainerMetrics) -> None:
        self.consumer = consumer
        self.store = store
        self.metrics = metrics
        self.total = IngestResult()

    @classmethod
    def connect(cls, bootstrap: str, group_id: str, store: DatasetStore, metrics: TrainerMetrics) -> Ingestor:
        consumer = make_consumer(
            bootstrap, group_id, [TOPIC_COMPLETIONS, TOPIC_FEEDBACK], max_poll_records=2_000, consumer_timeout_ms=1_000
        )
        return cls(consumer, store, metrics)

    def poll(self, timeout_ms: int = 1_000) -> int:
        """Store one polled batch and commit its offsets; return how many records it held."""
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        records = [(message.topic, message.value) for messages in batches.values() for message in messages]
        if not records:
            return 0
        result = self.store.ingest(records)
        # The rows are committed in SQLite: only now may Kafka forget them.
        self.consumer.commit()
        for kind, count in result.kinds.items():
            self.metrics.events_ingested.labels(kind).inc(count)
        if result.duplicates:
            self.metrics.events_duplicate.labels("any").inc(result.duplicates)
        if result.invalid:
            self.metrics.events_invalid.labels("any").inc(result.invalid)
        self.total.stored += result.stored
        self.total.duplicates += result.duplicates
        self.total.invalid += result.invalid
        log.debug("ingested %d records: %s", len(records), result)
        return len(records)

    def catch_up(self, settle_s: float = 3.0, timeout_s: float = 120.0) -> IngestResult:
        """Poll until the topics stay quiet for `settle_s` after the group got its partitions."""
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            got = self.poll(timeout_ms=500)
            if got or not self.consumer.assignment():
                quiet_since = None
                continue
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= settle_s:
                return self.total
        raise TimeoutError(f"the topics did not go quiet within {timeout_s:.0f} s")

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except KafkaError:
            pass
