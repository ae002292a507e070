"""The roll-out state machine: every replica folds the same events into the same state."""

from __future__ import annotations

import time
from dataclasses import replace

from flywheel.channel import decision_event, published_event
from flywheel.events import SCHEMA_VERSION
from flywheel.rollout import RolloutState, fold, read_snapshot, write_snapshot
from flywheel.v1 import events_pb2

Action = events_pb2.RolloutAction


def published(version: str, at: float) -> events_pb2.PolicyEvent:
    event = events_pb2.PolicyPublished(event_id=f"pub-{version}", schema_version=SCHEMA_VERSION, version=version)
    event.created_at.FromNanoseconds(int(at * 1e9))
    return published_event(event)


def decided(action: int, version: str, at: float, fraction: float | None = None) -> events_pb2.PolicyEvent:
    event = decision_event(
        action, version, state=RolloutState(), reason="test", decided_by="t", canary_fraction=fraction
    )
    event.decision.created_at.FromNanoseconds(int(at * 1e9))
    return event


def fold_all(events, state: RolloutState | None = None) -> RolloutState:
    state = state or RolloutState()
    for event in events:
        state = fold(state, event)
    return state


def test_a_published_version_becomes_the_canary_and_replaces_an_untested_one():
    state = fold_all([published("v1", 1), published("v2", 2)])
    assert (state.stable, state.canary, state.canary_since, state.fallback) == ("base", "v2", 2, "v1")
    state = fold(state, published("v3", 3))
    assert (state.canary, state.fallback, state.retired) == ("v3", "v2", {"v1": "superseded by v3"})


def test_a_refused_canary_gives_its_place_back_to_the_one_it_replaced():
    state = fold_all([published("v1", 1), published("bad", 2), decided(Action.ROLLOUT_ACTION_REFUSE, "bad", 3)])
    assert (state.canary, state.canary_since, state.fallback) == ("v1", 1, "")
    assert state.retired["bad"].startswith("refused")
    # Promoting or rolling back a canary retires the one it replaced.
    state = fold_all([published("v2", 4), decided(Action.ROLLOUT_ACTION_ROLLBACK, "v2", 5)], state)
    assert (state.stable, state.canary, state.fallback) == ("base", "", "")
    assert set(state.retired) == {"bad", "v1", "v2"}


def test_promote_makes_the_canary_stable_and_rollback_retires_it_for_good():
    state = fold_all([published("v1", 1), decided(Action.ROLLOUT_ACTION_PROMOTE, "v1", 2)])
    assert (state.stable, state.canary) == ("v1", "")
    state = fold_all([published("v2", 3), decided(Action.ROLLOUT_ACTION_ROLLBACK, "v2", 4)], state)
    assert (state.stable, state.canary) == ("v1", "")
    assert state.retired["v2"] == "rolled back: test"
    # The same version announced again (a replay, a retry) never comes back as canary.
    assert fold(state, published("v2", 5)).canary == ""


def test_replays_and_stale_events_change_nothing():
    events = [published("v1", 1), decided(Action.ROLLOUT_ACTION_PROMOTE, "v1", 2), published("v2", 3)]
    once = fold_all(events)
    assert fold_all(events, once) == once  # the whole log read again (a rescan, a restart)
    # Log order decides, not clocks: an event stamped earlier but logged later still counts.
    late = fold(once, published("v3", 0.5))
    assert (late.canary, late.fallback) == ("v3", "v2")


def test_refusal_retires_a_version_and_the_fraction_is_clamped():
    state = fold_all([published("v1", 1), decided(Action.ROLLOUT_ACTION_REFUSE, "v1", 2)])
    assert state.canary == "" and state.retired["v1"].startswith("refused")
    state = fold(state, decided(Action.ROLLOUT_ACTION_SET_CANARY_FRACTION, "", 3, fraction=1.7))
    assert state.canary_fraction == 1.0


def test_an_operator_can_bring_a_retired_version_back_as_canary():
    state = fold_all([published("v1", 1), decided(Action.ROLLOUT_ACTION_ROLLBACK, "v1", 2)])
    state = fold(state, decided(Action.ROLLOUT_ACTION_CANARY, "v1", 3))
    assert state.canary == "v1" and "v1" not in state.retired


def test_snapshot_round_trips_and_a_missing_or_broken_one_gives_the_default(tmp_path):
    assert read_snapshot(tmp_path, 0.25) == RolloutState(canary_fraction=0.25)
    state = replace(fold_all([published("v1", 1), published("v2", 2)]), canary_fraction=0.3)
    write_snapshot(tmp_path, state)
    assert read_snapshot(tmp_path, 0.5) == state
    (tmp_path / "rollout.json").write_text("{not json", encoding="utf-8")
    assert read_snapshot(tmp_path, 0.5) == RolloutState(canary_fraction=0.5)


def test_the_policy_reader_skips_and_counts_what_it_cannot_use_and_survives_a_failing_loop(monkeypatch):
    """A reader thread that died left a replica deaf to every later version, with /healthz still ok."""
    import threading

    from flywheel.channel import PolicyLog

    handled, skipped = [], []

    def on_event(event):
        if event.decision.reason == "boom":
            raise RuntimeError("a handler bug")
        handled.append(event)

    reader = PolicyLog("127.0.0.1:1", on_event, "test", on_skip=lambda: skipped.append(1))
    good = events_pb2.PolicyEvent(decision=events_pb2.RolloutDecision(reason="fine"))
    bad = events_pb2.PolicyEvent(decision=events_pb2.RolloutDecision(reason="boom"))
    for payload in (b"\xff not protobuf", events_pb2.PolicyEvent().SerializeToString(), bad.SerializeToString(),
                    good.SerializeToString()):  # fmt: skip
        reader._deliver(payload)
    assert [e.decision.reason for e in handled] == ["fine"] and len(skipped) == reader.skipped == 3

    connects = []

    def connect():
        connects.append(1)
        raise ValueError("not a Kafka error")  # escaped the KafkaError handler and ended the thread

    monkeypatch.setattr(reader, "_connect", connect)
    monkeypatch.setattr(reader._stop, "wait", lambda seconds: reader._stop.is_set())  # no back-off in a test
    thread = threading.Thread(target=reader._run, daemon=True)
    reader._thread = thread
    thread.start()
    deadline = time.monotonic() + 10
    while len(connects) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.is_alive() and "failed" in reader.health()
    reader._stop.set()
    thread.join(5)
