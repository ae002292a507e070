"""The policy channel: every event on `flywheel.policy.v1`, how it is built, sent and read.

The trainer (a new version), `flywheel merge` (a full-weight version), the roll-out controller and
operators (decisions), serving replicas (they read it), the benchmarks and the tests all go through
this module, so an event is built one way and sent one way: acks=all, keyed by version.

Events (`PolicyEvent`): `PolicyPublished`, a version in the model store with its files' sha256, or
`RolloutDecision` (canary, promote, roll back, refuse, set the canary fraction). What they add up to
is `flywheel.rollout.fold`'s business.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kafka import TopicPartition
from kafka.errors import KafkaError

from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
from flywheel.kafka import close_quietly, make_consumer, make_producer
from flywheel.settings import TOPIC_POLICY
from flywheel.v1 import events_pb2

if TYPE_CHECKING:
    from flywheel.rollout import RolloutState
    from flywheel.store import Manifest

log = logging.getLogger(__name__)

ADAPTER_KIND = "lora"  # a PEFT LoRA adapter on the base model: what a round publishes
FULL_KIND = "full"  # full weights (`flywheel merge`): served on the engine's own weights
REWARD_KIND = "reward"  # a reward model (the reward-model store): never announced, never served

RESCAN_S = 30.0  # re-read the whole (small) topic this often: survives a broker that lost its log


# -- building events


def inner(event: events_pb2.PolicyEvent) -> events_pb2.PolicyPublished | events_pb2.RolloutDecision:
    """What a policy event carries: a publication or a roll-out decision."""
    return event.published if event.HasField("published") else event.decision


def event_time(event: events_pb2.PolicyEvent) -> float:
    return inner(event).created_at.ToNanoseconds() / 1e9


def event_id(event: events_pb2.PolicyEvent) -> str:
    return inner(event).event_id


def publication(manifest: Manifest) -> events_pb2.PolicyPublished:
    """The PolicyPublished event for a version in the model store (its files, their sha256, its metrics)."""
    event = events_pb2.PolicyPublished(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        version=manifest.version,
        parent_version=manifest.parent,
        base_model=manifest.base_model,
        kind=manifest.kind,
        path=manifest.version,
    )
    for entry in manifest.files:
        event.files.add(path=entry.path, sha256=entry.sha256, size=entry.size)
    for key, value in manifest.metrics.items():
        if isinstance(value, int | float) and not math.isnan(value):
            event.metrics[key] = float(value)
    return event


def decision_event(
    action: int,
    version: str,
    *,
    state: RolloutState,
    reason: str,
    decided_by: str,
    canary_fraction: float | None = None,
    statistics: dict[str, float] | None = None,
) -> events_pb2.PolicyEvent:
    decision = events_pb2.RolloutDecision(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        action=action,
        version=version,
        stable_version=state.stable,
        canary_fraction=state.canary_fraction if canary_fraction is None else canary_fraction,
        reason=reason,
        decided_by=decided_by,
    )
    for key, value in (statistics or {}).items():
        decision.statistics[key] = float(value)
    return events_pb2.PolicyEvent(decision=decision)


def published_event(published: events_pb2.PolicyPublished) -> events_pb2.PolicyEvent:
    return events_pb2.PolicyEvent(published=published)


# -- sending


class PolicySender:
    """One producer kept open; `send` waits for the broker's acknowledgement (acks=all).

    A failed send closes the producer (the next send opens a new one) and raises KafkaError.
    """

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Open the producer and fetch the topic's metadata now (a timed send then measures only the send)."""
        with self._lock:
            self._open().partitions_for(TOPIC_POLICY)

    def _open(self):
        if self._producer is None:
            self._producer = make_producer(self.bootstrap)
        return self._producer

    def send(self, event: events_pb2.PolicyEvent, timeout_s: float = 30.0) -> None:
        key = inner(event).version.encode()
        with self._lock:
            self._open()
            try:
                future = self._producer.send(TOPIC_POLICY, key=key, value=event.SerializeToString())
                future.get(timeout_s)
            except KafkaError:
                close_quietly(self._producer)
                self._producer = None
                raise

    def announce(self, manifest: Manifest, timeout_s: float = 30.0) -> events_pb2.PolicyEvent:
        """Send PolicyPublished for `manifest`; returns the event sent."""
        event = published_event(publication(manifest))
        self.send(event, timeout_s)
        log.info("announced %s on %s", manifest.version, TOPIC_POLICY)
        return event

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


def announce(bootstrap: str, manifest: Manifest, timeout_s: float = 30.0) -> events_pb2.PolicyEvent:
    """Send PolicyPublished for one version on a producer of its own (a CLI command, a test)."""
    sender = PolicySender(bootstrap)
    try:
        return sender.announce(manifest, timeout_s)
    finally:
        sender.close()


# -- reading


class PolicyLog:
    """Follows `flywheel.policy.v1` from its beginning, calling `on_event` for every event, in order.

    No consumer group: every reader gets every event (DESIGN.md's "a group per replica"), and the
    local broker's group coordinator cannot recover from a SIGKILLed member. The whole topic is
    re-read every RESCAN_S seconds, which costs little (a few events per version) and recovers from a
    broker that restarted and lost its log; `fold` ignores what it has already seen.
    """

    def __init__(
        self,
        bootstrap: str,
        on_event: Callable[[events_pb2.PolicyEvent], None],
        name: str,
        on_skip: Callable[[], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.on_event = on_event
        self.on_skip = on_skip or (lambda: None)
        self.name = name
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender = PolicySender(bootstrap)
        self.skipped = 0  # records it could not use (malformed, or their handling failed)
        self.failures = 0  # failures of the read loop in a row (not the broker being away)

    def health(self) -> str:
        """'' while the reader runs; else what is wrong (a dead reader would leave a replica deaf for good)."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the policy topic reader has stopped"
        if self.failures >= 3:
            return f"the policy topic reader failed {self.failures} times in a row"
        return ""

    def start(self) -> PolicyLog:
        self._thread = threading.Thread(target=self._run, name=f"policy-log-{self.name}", daemon=True)
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the topic has been read to its end at least once."""
        return self._caught_up.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._sender.close()

    def publish(self, event: events_pb2.PolicyEvent, timeout_s: float = 30.0) -> None:
        """Send one event and wait for the broker's acknowledgement (raises KafkaError)."""
        self._sender.send(event, timeout_s)

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._connect()
                    rescan_at = 0.0
                if time.monotonic() >= rescan_at:
                    consumer.seek_to_beginning()
                    rescan_at = time.monotonic() + RESCAN_S
                batches = consumer.poll(timeout_ms=500, max_records=500)
                # Log order: the topic has one partition (created so here, and in k8s/base/kafka.yaml),
                # and a partition's records come in offset order. Never the records' clocks.
                records = [r for _, batch in sorted(batches.items(), key=lambda item: item[0].partition) for r in batch]
                for record in records:
                    self._deliver(record.value)
                if not records:
                    self._caught_up.set()
                self.failures = 0
            except KafkaError as exc:
                log.warning("policy topic unreachable (%s); retrying", exc)
                if consumer is not None:
                    consumer.close()
                consumer = None
                self._stop.wait(2.0)
            except Exception:  # a bug must not end the loop: the replica would never hear of a version again
                self.failures += 1
                log.exception("the policy topic reader failed (%d in a row); reading again", self.failures)
                if consumer is not None:
                    consumer.close()
                consumer = None
                self._stop.wait(min(30.0, 2.0**self.failures))
        if consumer is not None:
            consumer.close()

    def _connect(self):
        # A fetch with nothing to return waits up to fetch_max_wait_ms, and the local broker does not
        # answer early when a record arrives: kafka-python's 500 ms default was most of an idle swap.
        consumer = make_consumer(self.bootstrap, None, [], consumer_timeout_ms=500, fetch_max_wait_ms=50)
        deadline = time.monotonic() + 30
        partitions = consumer.partitions_for_topic(TOPIC_POLICY)
        while not partitions and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.5)
            partitions = consumer.partitions_for_topic(TOPIC_POLICY)
        if not partitions:
            consumer.close()
            raise KafkaError(f"topic {TOPIC_POLICY} not found")
        consumer.assign([TopicPartition(TOPIC_POLICY, p) for p in sorted(partitions)])
        return consumer

    def _deliver(self, payload: bytes | None) -> None:
        try:
            event = events_pb2.PolicyEvent.FromString(payload or b"")
        except Exception as exc:
            self.skipped += 1
            self.on_skip()
            log.warning("skipping a malformed record on %s: %s", TOPIC_POLICY, exc)
            return
        if event.WhichOneof("kind") is None:
            self.skipped += 1
            self.on_skip()
            return
        try:
            self.on_event(event)
        except Exception:
            self.skipped += 1
            self.on_skip()
            log.exception("handling a policy event failed; skipped")
