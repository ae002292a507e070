"""The relay: publishes outbox events to Kafka in order and marks them published once acked.

It runs in a child process of the feedback service (kafka-python's producer is CPU-heavy and
would otherwise share the GIL with the API), holding a file lock so only one relay works an
outbox. acks=all and the idempotent producer; a failed batch stays unpublished and is retried
until the broker acknowledges it. Duplicates after a partial failure are possible, so
consumers dedupe by idempotency key. If the broker hands out offsets below ones it already
acknowledged, or its topic is gone after a reconnect, it lost data (the local in-memory broker
after a restart): every retained event is replayed. An event the broker can never accept (too
large, invalid) is copied to the outbox's dead-letter table and counted, and the rest go on.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import RecordMetadata

from feedback.outbox import OutboxLedger, PendingEvent
from flywheel.kafka import UNDELIVERABLE, close_quietly, create_topics, make_producer
from flywheel.metrics import LATENCY_BUCKETS
from flywheel.settings import TOPIC_FEEDBACK

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0  # the first restart of a dead relay waits this long after the last one, doubling
RESTART_BACKOFF_MAX_S = 30.0
RESTART_RESET_S = 60.0  # a relay up this long starts the back-off again from its first step


class RelayStats:
    """Counters the relay process shares with the service process (one shared array)."""

    PUBLISHED, RETRIES, REPLAYED, LATENCY_SUM, LATENCY_COUNT, DEAD_LETTERED = range(6)
    BUCKETS_AT = 6  # the latency histogram's bucket counts follow the scalars
    BUCKETS = LATENCY_BUCKETS

    def __init__(self) -> None:
        self.values = multiprocessing.get_context("spawn").Array("d", self.BUCKETS_AT + len(self.BUCKETS) + 1)

    def add(self, index: int, amount: float = 1.0) -> None:
        with self.values.get_lock():
            self.values[index] += amount

    def observe_latency(self, seconds: float) -> None:
        with self.values.get_lock():
            self.values[self.LATENCY_SUM] += seconds
            self.values[self.LATENCY_COUNT] += 1
            # One bucket per observation (the smallest that holds it); collect() makes them cumulative.
            # Counting it in every bucket above as well, and summing again there, gave _count 15 per event.
            for i, bound in enumerate((*self.BUCKETS, float("inf"))):
                if seconds <= bound:
                    self.values[self.BUCKETS_AT + i] += 1
                    break

    def snapshot(self) -> list[float]:
        with self.values.get_lock():
            return list(self.values)


class Relay:
    """The publishing loop; `run` returns when `should_stop()` says so."""

    def __init__(
        self,
        ledger: OutboxLedger,
        bootstrap: str,
        stats: RelayStats,
        batch: int = 500,
        retention_s: float = 86_400.0,
        producer_factory: Callable[[str], KafkaProducer] = make_producer,
        backoff_s: float = 0.5,
        linger_s: float = 0.05,
        manage_topics: bool = True,
    ) -> None:
        self.ledger = ledger
        self.manage_topics = manage_topics
        self.bootstrap = bootstrap
        self.stats = stats
        self.batch = batch
        self.retention_s = retention_s
        self._producer_factory = producer_factory
        self._backoff_s = backoff_s
        self._linger_s = linger_s
        self._producer: KafkaProducer | None = None
        self._high_offsets: dict[int, int] = {}
        self._last_prune = 0.0
        self._last_checkpoint = 0.0
        self._failing_since: float | None = None

    def run(self, should_stop: Callable[[], bool], wait_for_events: Callable[[float], object]) -> None:
        try:
            while not should_stop():
                published = self.publish_once()
                if not published:
                    wait_for_events(0.2)
                elif published < self.batch:
                    # Let commits gather for a moment: one Kafka flush and one ledger mark per
                    # linger rather than per group commit (at 500 events/s that was ~190 of each a
                    # second, a quarter of a core and a write lock taken between every two commits).
                    time.sleep(self._linger_s)
        finally:
            self._reset_producer()

    def publish_once(self) -> int:
        """Publish one batch; returns the events it held (0: there was nothing to publish)."""
        self._maintain()
        pending = self.ledger.unpublished(self.batch)
        if not pending:
            return 0
        started = time.perf_counter()
        try:
            records, dead = self._send(self._producer_or_connect(), pending)
        except (KafkaError, OSError, TimeoutError) as exc:
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("publishing feedback to Kafka failed (%s); retrying until it acknowledges", exc)
            self.stats.add(RelayStats.RETRIES)
            self._reset_producer()
            time.sleep(self._backoff_s)
            return len(pending)
        if self._failing_since is not None:
            log.info("Kafka acknowledged feedback again after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None
        if dead:
            self.ledger.dead_letter(dead)  # before the batch's mark, which covers these too
            self.stats.add(RelayStats.DEAD_LETTERED, len(dead))
        self.ledger.mark_published([e.seq for e in pending])
        self.stats.add(RelayStats.PUBLISHED, len(records))
        self.stats.observe_latency(time.perf_counter() - started)
        self._check_offsets([record for _, record in records], [seq for seq, _ in records])
        return len(pending)

    def _send(
        self, producer: KafkaProducer, pending: list[PendingEvent]
    ) -> tuple[list[tuple[int, RecordMetadata]], dict[int, str]]:
        """Send a batch and wait for it: (seq, metadata) of the events acknowledged and {seq: why} of
        those the broker will never accept. Any other error raises: the whole batch is retried."""
        futures, dead = [], {}
        for event in pending:
            key = event.kafka_key.encode()
            try:
                futures.append((event.seq, producer.send(TOPIC_FEEDBACK, key=key, value=event.payload)))
            except UNDELIVERABLE as exc:  # checked by the client before sending (max_request_size)
                dead[event.seq] = str(exc)
        producer.flush(timeout=30)
        records = []
        for seq, future in futures:
            try:
                records.append((seq, future.get(timeout=0)))
            except UNDELIVERABLE as exc:  # refused by the broker
                dead[seq] = str(exc)
        for seq, reason in dead.items():
            log.error("dead-lettered feedback event seq %d (the broker will never accept it): %s", seq, reason)
        return records, dead

    def _producer_or_connect(self) -> KafkaProducer:
        if self._producer is None:
            # The local broker forgets topics on restart; a managed Kafka (Strimzi) owns them instead.
            created = create_topics(self.bootstrap, timeout_s=5) if self.manage_topics else []
            self._producer = self._producer_factory(self.bootstrap)
            if TOPIC_FEEDBACK in created and self._high_offsets:
                self._high_offsets = {}  # a new topic starts again at offset 0
                self._replay("the feedback topic was gone when the relay reconnected", keep=[])
        return self._producer

    def _reset_producer(self) -> None:
        close_quietly(self._producer)
        self._producer = None

    def _check_offsets(self, records: list, seqs: list[int]) -> None:
        lost = any(r.offset <= self._high_offsets.get(r.partition, -1) for r in records)
        if lost:
            self._high_offsets = {}
        for record in records:
            self._high_offsets[record.partition] = max(self._high_offsets.get(record.partition, -1), record.offset)
        if lost:
            self._replay("offsets went back", keep=seqs)

    def _replay(self, why: str, keep: list[int]) -> None:
        replayed = self.ledger.replay_published(keep_published=keep)
        self.stats.add(RelayStats.REPLAYED, replayed)
        log.warning("the broker lost acknowledged feedback (%s); replaying %d retained events", why, replayed)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint > 1.0:
            self._last_checkpoint = now
            self.ledger.checkpoint()
        if now - self._last_prune > 60:
            self._last_prune = now
            pruned = self.ledger.prune(self.retention_s)
            if pruned:
                log.info("pruned %d published feedback events past retention", pruned)


def _relay_main(outbox_path: str, bootstrap: str, batch: int, retention_s: float, stats: RelayStats,
                wake, parent_pid: int, manage_topics: bool = True) -> None:  # fmt: skip
    """Entry point of the relay process. SIGTERM (from the service, or its process group) stops it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's to handle

    def should_stop() -> bool:
        return bool(stopping) or os.getppid() != parent_pid  # the service died: so do we

    path = Path(outbox_path)
    with open(path.with_suffix(".relay-lock"), "w") as lock:
        # One relay per outbox: a relay orphaned by a killed service holds the lock until it exits.
        while not should_stop():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.2)
        ledger = OutboxLedger(path)

        def wait_for_events(timeout: float) -> None:
            # A pipe, not a multiprocessing Event: an Event's setter deadlocks when its waiter
            # dies, and the relay may be killed at any time.
            if wake.poll(timeout):
                while wake.poll(0):
                    wake.recv_bytes()

        try:
            relay = Relay(ledger, bootstrap, stats, batch, retention_s, manage_topics=manage_topics)
            relay.run(should_stop, wait_for_events)
        finally:
            ledger.close()


class RelayProcess:
    """The service's handle on its relay child process, started again when it dies.

    A relay killed on its own (the kernel's OOM killer, a stray SIGKILL) would leave every event
    answered 202 in the outbox until the service restarted: `ensure_running` (called every second
    by the service) starts a new one, at most once per back-off (1 s, doubling to 30 s).
    """

    def __init__(
        self, outbox_path: Path, bootstrap: str, batch: int, retention_s: float, manage_topics: bool = True
    ) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.stats = RelayStats()
        self._wake_reader, self._wake = self._context.Pipe(duplex=False)
        os.set_blocking(self._wake.fileno(), False)  # waking never blocks the service
        self._args = (str(outbox_path), bootstrap, batch, retention_s, self.stats, self._wake_reader, os.getpid(),
                      manage_topics)  # fmt: skip
        self._process = self._new_process()
        self.restarts = 0
        self._stopping = False
        self._started_at = 0.0
        self._down_since: float | None = None
        self._next_start_at = 0.0
        self._backoff_s = RESTART_BACKOFF_S

    def _new_process(self):
        return self._context.Process(target=_relay_main, args=self._args, name="feedback-relay", daemon=True)

    def start(self) -> RelayProcess:
        self._process.start()
        self._started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def ensure_running(self) -> bool:
        """Start the relay again if it died; True when this call started it."""
        now = time.monotonic()
        if self._stopping or self._process.is_alive():
            if now - self._started_at > RESTART_RESET_S:
                self._backoff_s = RESTART_BACKOFF_S  # it stayed up: a later death is a new story
            return False
        if self._down_since is None:
            self._down_since = now
            log.error("the feedback relay died (exit code %s); accepted events wait until it runs again",
                      self._process.exitcode)  # fmt: skip
        if now < self._next_start_at:
            return False
        self._process.join(timeout=0)
        self._process = self._new_process()
        self.start()
        self.restarts += 1
        self._down_since = None
        self._next_start_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, RESTART_BACKOFF_MAX_S)
        log.warning("started the feedback relay again (%d restarts)", self.restarts)
        return True

    def down_for(self) -> float:
        """Seconds the relay has been seen dead (0 while it runs)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def wake(self) -> None:
        """Tell the relay that events were committed (a byte down a pipe; dropped when full)."""
        try:
            self._wake.send_bytes(b"!")
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # full (it will wake anyway) or gone (it is being restarted)

    def stop(self, drain_s: float = 5.0, pending: Callable[[], int] = lambda: 0) -> None:
        """Give the relay `drain_s` to publish what is pending, then stop it."""
        self._stopping = True
        deadline = time.monotonic() + drain_s
        while self._process.is_alive() and pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
