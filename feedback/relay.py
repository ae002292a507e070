"""The relay: publishes outbox events to Kafka in order and marks them published once acked.

acks=all and the idempotent producer; a failed batch stays unpublished and is retried until
the broker acknowledges it. Duplicates after a partial failure are possible, so consumers
dedupe by idempotency key. If the broker hands out offsets below ones it already acknowledged,
it lost data (the local in-memory broker after a restart): every retained event is replayed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from feedback.metrics import FeedbackMetrics
from feedback.outbox import Outbox
from flywheel.kafka import create_topics, make_producer
from flywheel.settings import TOPIC_FEEDBACK

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        outbox: Outbox,
        bootstrap: str,
        metrics: FeedbackMetrics,
        batch: int = 500,
        retention_s: float = 86_400.0,
        producer_factory: Callable[[str], KafkaProducer] = make_producer,
        backoff_s: float = 0.5,
    ) -> None:
        self.outbox = outbox
        self.bootstrap = bootstrap
        self.metrics = metrics
        self.batch = batch
        self.retention_s = retention_s
        self._producer_factory = producer_factory
        self._backoff_s = backoff_s
        self._producer: KafkaProducer | None = None
        self._high_offsets: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback-relay", daemon=True)
        self._last_prune = 0.0
        self._last_checkpoint = 0.0
        self._failing_since: float | None = None
        self.broker_losses = 0

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + drain_timeout_s
        while self.outbox.pending and time.monotonic() < deadline and self._producer is not None:
            time.sleep(0.05)
        self._stop.set()
        self.outbox.new_events.set()
        self._thread.join(timeout=drain_timeout_s + 5)
        self._reset_producer()

    def _producer_or_connect(self) -> KafkaProducer:
        if self._producer is None:
            created = create_topics(self.bootstrap, timeout_s=5)  # the local broker forgets topics on restart
            self._producer = self._producer_factory(self.bootstrap)
            if TOPIC_FEEDBACK in created and self._high_offsets:
                self._high_offsets = {}  # a new topic starts again at offset 0
                self._replay("the feedback topic was gone when the relay reconnected", keep=[])
        return self._producer

    def _reset_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except KafkaError:
                pass
            self._producer = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.metrics.outbox_depth.set(self.outbox.pending)
            self._maybe_prune()
            self._maybe_checkpoint()
            pending = self.outbox.unpublished(self.batch)
            if not pending:
                self.outbox.new_events.wait(timeout=0.5)
                self.outbox.new_events.clear()
                continue
            started = time.perf_counter()
            try:
                producer = self._producer_or_connect()
                futures = [producer.send(TOPIC_FEEDBACK, key=e.kafka_key.encode(), value=e.payload) for e in pending]
                producer.flush(timeout=30)
                records = [future.get(timeout=0) for future in futures]
            except (KafkaError, OSError, TimeoutError) as exc:
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("publishing feedback to Kafka failed (%s); retrying until it acknowledges", exc)
                self.metrics.relay_retries.inc()
                self._reset_producer()
                self._stop.wait(self._backoff_s)
                continue
            if self._failing_since is not None:
                log.info("Kafka acknowledged feedback again after %.1f s", time.monotonic() - self._failing_since)
                self._failing_since = None
            seqs = [e.seq for e in pending]
            self.outbox.mark_published(seqs)
            elapsed = time.perf_counter() - started
            self.metrics.published.inc(len(pending))
            self.metrics.publish_latency.observe(elapsed)
            self._check_offsets(records, seqs)

    def _check_offsets(self, records: list, seqs: list[int]) -> None:
        lost = any(r.offset <= self._high_offsets.get(r.partition, -1) for r in records)
        if lost:
            self._high_offsets = {}
        for record in records:
            self._high_offsets[record.partition] = max(self._high_offsets.get(record.partition, -1), record.offset)
        if lost:
            self._replay("offsets went back", keep=seqs)

    def _replay(self, why: str, keep: list[int]) -> None:
        self.broker_losses += 1
        replayed = self.outbox.replay_published(keep_published=keep)
        self.metrics.replayed.inc(replayed)
        log.warning("the broker lost acknowledged feedback (%s); replaying %d retained events", why, replayed)

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self._last_checkpoint > 1.0:
            self._last_checkpoint = time.monotonic()
            self.outbox.checkpoint()

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune > 60:
            self._last_prune = time.monotonic()
            pruned = self.outbox.prune(self.retention_s)
            if pruned:
                log.info("pruned %d published feedback events past retention", pruned)
