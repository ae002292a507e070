"""Kafka → the dataset store, with the consumer's place saved in the same transaction as the rows.

No consumer group: the local broker's group coordinator can loop in rebalances forever after a
member is killed (seen here), so the trainer assigns itself every partition and keeps its
offsets in SQLite, committed with the rows they cover. A crash therefore replays nothing it
stored and skips nothing it did not; replays that do happen (a reset) are ignored by the store.
The local broker forgets its logs on restart: every fetch starts again at the record stored last,
whose saved digest tells a recreated log from the old one, and a recreated log is read again from
its start.
"""

from __future__ import annotations

import hashlib
import logging
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from flywheel.kafka import make_consumer
from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics
from trainer.records import IngestResult

log = logging.getLogger(__name__)

TOPICS = (TOPIC_COMPLETIONS, TOPIC_FEEDBACK)
RECHECK_S = 15.0  # how often positions are checked against the broker's logs
CHECK_WAIT_S = 8.0  # how long the last record read may take to come back before its log counts as new


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


class Ingestor:
    """Polls both topics and stores what it gets; `poll` is one batch, `catch_up` drains them."""

    def __init__(self, consumer: KafkaConsumer, store: DatasetStore, metrics: TrainerMetrics) -> None:
        self.consumer = consumer
        self.store = store
        self.metrics = metrics
        self.total = IngestResult()
        # Partitions whose first record must be the one we read last, or the log is a new one:
        # (offset of that record, its digest, when to give up waiting for it).
        self._check: dict[TopicPartition, tuple[int, str, float]] = {}
        self._assigned_at = 0.0

    @classmethod
    def connect(cls, bootstrap: str, store: DatasetStore, metrics: TrainerMetrics) -> Ingestor:
        consumer = make_consumer(bootstrap, None, [], max_poll_records=2_000, consumer_timeout_ms=1_000)
        ingestor = cls(consumer, store, metrics)
        ingestor.assign()
        return ingestor

    def assign(self) -> None:
        """Take every partition of both topics, each from where the store says it stopped.

        Called again every `RECHECK_S`: that finds new partitions, and re-reading the last
        stored record of each partition notices a broker that restarted with an empty log.
        """
        partitions = []
        for topic in TOPICS:
            found = self.consumer.partitions_for_topic(topic) or set()
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(partitions)
        saved = self.store.positions()
        for tp in partitions:
            if (tp.topic, tp.partition) in saved:
                offset, last = saved[(tp.topic, tp.partition)]
                self._arm(tp, offset - 1, last)  # re-read the last record to recognise the log
            else:
                self.consumer.seek_to_beginning(tp)
        self._assigned_at = time.monotonic()
        log.debug("reading %d partitions (%d from saved positions)", len(partitions), len(self._check))

    def poll(self, timeout_ms: int = 1_000) -> int:
        """Store one polled batch with the new positions; return how many new records it held."""
        if time.monotonic() - self._assigned_at > RECHECK_S or not self.consumer.assignment():
            self.assign()
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        for tp, (_, _, give_up_at) in list(self._check.items()):
            if tp not in batches and time.monotonic() > give_up_at:
                # The record we read last is gone: the log is shorter than our position, so new.
                self._new_log(tp)
        records: list[tuple[str, bytes]] = []
        positions: dict[tuple[str, int], tuple[int, str]] = {}
        for tp, messages in batches.items():
            if tp in self._check:
                messages = self._after_check(tp, messages)
            if not messages:
                continue
            records += [(m.topic, m.value) for m in messages]
            positions[(tp.topic, tp.partition)] = (messages[-1].offset + 1, digest(messages[-1].value))
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(tp.topic).set(max(0, high - messages[-1].offset - 1))
        if not records:
            if batches:  # only the re-read of records already stored: wait for news instead of spinning
                time.sleep(timeout_ms / 1000)
            return 0
        result = self.store.ingest(records, positions)
        for (topic, partition), (offset, last) in positions.items():
            # Every fetch starts with the record stored last: a broker that restarted between two
            # polls would otherwise hand over its new log from our old position, unnoticed until the
            # next recheck, and the records before that position would never be read.
            self._arm(TopicPartition(topic, partition), offset - 1, last)
        for kind, count in result.kinds.items():
            self.metrics.events_ingested.labels(kind).inc(count)
        if result.duplicates:
            self.metrics.events_duplicate.inc(result.duplicates)
        if result.invalid:
            self.metrics.events_invalid.inc(result.invalid)
        self.total.stored += result.stored
        self.total.duplicates += result.duplicates
        self.total.invalid += result.invalid
        return len(records)

    def _arm(self, tp: TopicPartition, offset: int, last: str) -> None:
        """Read from the record at `offset` again next time; it must be the one whose digest is `last`."""
        self.consumer.seek(tp, offset)
        self._check[tp] = (offset, last, time.monotonic() + CHECK_WAIT_S)

    def _after_check(self, tp: TopicPartition, messages: list) -> list:
        """The records after the one we read last, or all of them once the log proves new."""
        offset, last, _ = self._check.pop(tp)
        first = messages[0]
        if first.offset == offset and digest(first.value) == last:
            if len(messages) == 1:
                self._arm(tp, offset, last)  # nothing new yet: check the same record next time
            return messages[1:]
        if first.offset == 0:
            log.warning("%s[%d] is a new log (the broker restarted); reading it all", tp.topic, tp.partition)
            return messages
        self._new_log(tp)
        return []

    def _new_log(self, tp: TopicPartition) -> None:
        log.warning("%s[%d] is a new log (the broker restarted); reading it from the start", tp.topic, tp.partition)
        self._check.pop(tp, None)
        # Forgotten at once: an empty new log gives no record to save a position with, and the old
        # position would be re-armed, and this warning repeated, at every recheck.
        self.store.forget_position(tp.topic, tp.partition)
        self.consumer.seek_to_beginning(tp)

    def catch_up(self, settle_s: float = 2.0, timeout_s: float = 120.0) -> IngestResult:
        """Poll until the topics stay quiet for `settle_s`."""
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll(timeout_ms=500):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                return self.total
        raise TimeoutError(f"the topics did not go quiet within {timeout_s:.0f} s")

    def close(self) -> None:
        try:
            self.consumer.close()
        except KafkaError:
            pass
