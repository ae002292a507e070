"""A bounded, ordered buffer in front of a Kafka producer, drained by one thread.

Producers of best-effort events (serving's completions) must never block or fail a user
request because Kafka is down: events wait here, are retried until acknowledged, and are
dropped (and counted) only when the buffer is full.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from flywheel.kafka import close_quietly, make_producer

log = logging.getLogger(__name__)

_BATCH = 256


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
        retry_backoff_s: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.capacity = capacity
        self._producer_factory = producer_factory
        self._on_published = on_published
        self._on_dropped = on_dropped
        self._on_error = on_error
        self._on_depth = on_depth
        self._backoff = retry_backoff_s
        self._buffer: collections.deque[tuple[bytes | None, bytes]] = collections.deque()
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
                producer = self._ensure_producer()
                futures = [producer.send(self.topic, key=key, value=value) for key, value in batch]
                producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=0)
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
            self._on_published(len(batch))
            if self._failing_since is not None:
                log.info("publishing to %s recovered after %.1f s", self.topic, time.monotonic() - self._failing_since)
                self._failing_since = None

    def _reset_producer(self) -> None:
        close_quietly(self._producer)
        self._producer = None
