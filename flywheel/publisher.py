"""A bounded, ordered buffer in front of a Kafka producer, drained by one thread.

Producers of best-effort events (serving's completions) must never block or fail a user
request because Kafka is down: events wait here, are retried until acknowledged, and are
dropped (and counted) only when the buffer is full. An event the broker can never accept
(too large, invalid) is dead-lettered instead: kept in a short list, counted, logged once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from flywheel.kafka import UNDELIVERABLE, close_quietly, make_producer

log = logging.getLogger(__name__)

_BATCH = 256
_Event = tuple[bytes | None, bytes]


def _noop(*_: object) -> None:
    return None


class BufferedPublisher:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        capacity: int,
        producer_factory: Callable[[str], KafkaProducer] = make_producer,
        on_published: Callable[[int], None] = _noop,
        on_dropped: Callable[[int], None] = _noop,
        on_error: Callable[[], None] = _noop,
        on_depth: Callable[[int], None] = _noop,
        on_dead_lettered: Callable[[int], None] = _noop,
        retry_backoff_s: float = 1.0,
        dead_letter_capacity: int = 16,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.capacity = capacity
        self._producer_factory = producer_factory
        self._on_published = on_published
        self._on_dropped = on_dropped
        self._on_error = on_error
        self._on_depth = on_depth
        self._on_dead_lettered = on_dead_lettered
        self._backoff = retry_backoff_s
        self._buffer: collections.deque[_Event] = collections.deque()
        # The latest events the broker refused for good, with why: for an operator, bounded in memory.
        self.dead_letters: collections.deque[tuple[bytes | None, bytes, str]] = collections.deque(
            maxlen=dead_letter_capacity
        )
        self._cond = threading.Condition()
        self._stopping = False
        self._producer: KafkaProducer | None = None
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"publisher-{topic}", daemon=True)

    def start(self) -> BufferedPublisher:
        self._thread.start()
        return self

    @property
    def depth(self) -> int:
        return len(self._buffer)

    def publish(self, key: str | None, value: bytes) -> bool:
        """Queue one event; False (and a drop counted) when the buffer is full. Never blocks."""
        with self._cond:
            if len(self._buffer) >= self.capacity:
                self._on_dropped(1)
                return False
            self._buffer.append((key.encode("utf-8") if key is not None else None, value))
            self._on_depth(len(self._buffer))
            self._cond.notify()
        return True

    def close(self, drain_timeout_s: float = 5.0) -> None:
        """Try to deliver what is buffered within the timeout, then stop."""
        deadline = time.monotonic() + drain_timeout_s
        while self._buffer and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=drain_timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=1)
        if self._buffer:
            log.warning("%d events for %s not delivered at shutdown", len(self._buffer), self.topic)

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = self._producer_factory(self.bootstrap)
        return self._producer

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._stopping:
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    return
                batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
            try:
                dead = self._send(self._ensure_producer(), batch)
            except (KafkaError, OSError, AssertionError) as exc:
                # Keep the batch at the head of the buffer and retry: duplicates are possible
                # after a partial failure, so consumers dedupe by event id.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("publishing to %s failed (%s); buffering and retrying", self.topic, exc)
                self._on_error()
                self._reset_producer()
                with self._cond:
                    self._cond.wait(timeout=self._backoff)
                continue
            with self._cond:
                for _ in batch:
                    self._buffer.popleft()
                self._on_depth(len(self._buffer))
            self._dead_letter(dead)
            self._on_published(len(batch) - len(dead))
            if self._failing_since is not None:
                log.info("publishing to %s recovered after %.1f s", self.topic, time.monotonic() - self._failing_since)
                self._failing_since = None

    def _send(self, producer: KafkaProducer, batch: list[_Event]) -> list[tuple[_Event, KafkaError]]:
        """Send a batch and wait for it; returns the events refused for good. Other errors raise."""
        dead: list[tuple[_Event, KafkaError]] = []
        futures = []
        for event in batch:
            try:
                futures.append((event, producer.send(self.topic, key=event[0], value=event[1])))
            except UNDELIVERABLE as exc:  # checked by the client before sending (max_request_size)
                dead.append((event, exc))
        producer.flush(timeout=30)
        for event, future in futures:
            try:
                future.get(timeout=0)
            except UNDELIVERABLE as exc:  # refused by the broker
                dead.append((event, exc))
        return dead

    def _dead_letter(self, dead: list[tuple[_Event, KafkaError]]) -> None:
        for (key, value), exc in dead:
            log.error("dead-lettered an event for %s (key %r, %d bytes): %s", self.topic, key, len(value), exc)
            self.dead_letters.append((key, value, str(exc)))
        if dead:
            self._on_dead_lettered(len(dead))

    def _reset_producer(self) -> None:
        close_quietly(self._producer)
        self._producer = None
