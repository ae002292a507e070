"""The roll-out state (stable, canary, fraction) and the policy topic it is folded from.

`flywheel.policy.v1` carries `PolicyEvent`s: a new version (`PolicyPublished`) or a decision
(`RolloutDecision`: canary, promote, roll back, refuse, set the canary fraction). Every process that
needs the roll-out state (each serving replica, the trainer's controller) folds the same events in
the same order with `fold`, a pure function, so all of them agree. Replays are harmless: an event
already folded (same id) is ignored. Order is the log's, never the clocks': two processes may
publish at the same moment.

The trainer, which may write the model store, keeps a snapshot (`rollout.json` in the store's root)
so that a replica started after the broker lost its log still comes back on the right versions.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kafka import TopicPartition
from kafka.errors import KafkaError

from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now
from flywheel.kafka import close_quietly, make_consumer, make_producer
from flywheel.settings import TOPIC_POLICY
from flywheel.v1 import events_pb2

log = logging.getLogger(__name__)

SNAPSHOT = "rollout.json"
BASE_VERSION = "base"
RESCAN_S = 30.0  # re-read the whole (small) topic this often: survives a broker that lost its log
_SEEN_LIMIT = 10_000

Action = events_pb2.RolloutAction


@dataclass(frozen=True)
class RolloutState:
    """Who serves what.

    `fallback` is the canary that the current one replaced: it comes back if the new one is refused
    (a broken publication never leaves users without the version they had). `retired` versions
    (rolled back, refused, superseded) never become canary again on their own.
    """

    stable: str = BASE_VERSION
    canary: str = ""
    canary_fraction: float = 0.5
    canary_since: float = 0.0
    fallback: str = ""
    fallback_since: float = 0.0
    retired: dict[str, str] = field(default_factory=dict)
    updated_at: float = 0.0
    seen: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"seen": list(self.seen)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        raw = json.loads(text)
        raw["seen"] = tuple(raw.get("seen", ()))
        return cls(**raw)


def event_time(event: events_pb2.PolicyEvent) -> float:
    inner = event.published if event.HasField("published") else event.decision
    return inner.created_at.ToNanoseconds() / 1e9


def event_id(event: events_pb2.PolicyEvent) -> str:
    return (event.published if event.HasField("published") else event.decision).event_id


def fold(state: RolloutState, event: events_pb2.PolicyEvent) -> RolloutState:
    """The state after `event`. Pure: the same events in the same order give the same state."""
    when, ident = event_time(event), event_id(event)
    if ident in state.seen:
        return state
    state = replace(state, updated_at=max(when, state.updated_at), seen=(*state.seen, ident)[-_SEEN_LIMIT:])
    if event.HasField("published"):
        version = event.published.version
        if version in (state.stable, state.canary, state.fallback) or version in state.retired:
            return state
        return _new_canary(state, version, when)
    decision = event.decision
    action, version = decision.action, decision.version
    if action == Action.ROLLOUT_ACTION_CANARY:
        if not version or version == state.stable or version == state.canary:
            return state
        retired = {k: v for k, v in state.retired.items() if k != version}  # an operator's explicit choice
        return _new_canary(replace(state, retired=retired), version, when)
    if action == Action.ROLLOUT_ACTION_PROMOTE:
        if not version or version == state.stable:
            return state
        retired = {k: v for k, v in state.retired.items() if k != version}
        state = _retire(replace(state, retired=retired), state.fallback, f"superseded by {version}")
        if state.canary == version:
            return replace(state, stable=version, canary="", fallback="")
        return replace(state, stable=version)
    if action in (Action.ROLLOUT_ACTION_ROLLBACK, Action.ROLLOUT_ACTION_REFUSE):
        version = version or state.canary
        if not version or version == state.stable:
            return state
        why = "rolled back" if action == Action.ROLLOUT_ACTION_ROLLBACK else "refused"
        state = _retire(state, version, f"{why}: {decision.reason}" if decision.reason else why)
        if version == state.fallback:
            return replace(state, fallback="")
        if version != state.canary:
            return state
        if action == Action.ROLLOUT_ACTION_REFUSE and state.fallback:  # the replaced canary comes back
            return replace(state, canary=state.fallback, canary_since=state.fallback_since, fallback="")
        state = _retire(state, state.fallback, f"superseded by {version}")
        return replace(state, canary="", fallback="")
    if action == Action.ROLLOUT_ACTION_SET_CANARY_FRACTION:
        return replace(state, canary_fraction=min(1.0, max(0.0, decision.canary_fraction)))
    return state


def _new_canary(state: RolloutState, version: str, when: float) -> RolloutState:
    """`version` becomes the canary; the one it replaces is kept as fallback, the fallback before it retires."""
    state = _retire(state, state.fallback, f"superseded by {version}")
    if state.canary:
        return replace(
            state, canary=version, canary_since=when, fallback=state.canary, fallback_since=state.canary_since
        )
    return replace(state, canary=version, canary_since=when, fallback="")


def _retire(state: RolloutState, version: str, why: str) -> RolloutState:
    if not version:
        return state
    return replace(state, retired={**state.retired, version: why})


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


# -- the snapshot in the model store


def read_snapshot(store_root: Path, default_fraction: float) -> RolloutState:
    path = Path(store_root) / SNAPSHOT
    if not path.is_file():
        return RolloutState(canary_fraction=default_fraction)
    try:
        return RolloutState.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as exc:
        log.warning("ignoring an unreadable roll-out snapshot %s: %s", path, exc)
        return RolloutState(canary_fraction=default_fraction)


def write_snapshot(store_root: Path, state: RolloutState) -> None:
    """Atomically replace `rollout.json` (temp file, fsync, rename)."""
    root = Path(store_root)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rollout-", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / SNAPSHOT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the topic


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
        self._producer = None
        self._producer_lock = threading.Lock()
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
        with self._producer_lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None

    def publish(self, event: events_pb2.PolicyEvent, timeout_s: float = 30.0) -> None:
        """Send one event and wait for the broker's acknowledgement (raises KafkaError)."""
        inner = event.published if event.HasField("published") else event.decision
        with self._producer_lock:
            if self._producer is None:
                self._producer = make_producer(self.bootstrap)
            try:
                self._producer.send(TOPIC_POLICY, key=inner.version.encode(), value=event.SerializeToString()).get(
                    timeout_s
                )
            except KafkaError:
                close_quietly(self._producer)
                self._producer = None
                raise

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
                records = sorted((r for batch in batches.values() for r in batch), key=lambda r: r.timestamp)
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
