"""The roll-out state (stable, canary, fraction), folded from the policy channel's events.

`flywheel.policy.v1` (flywheel/channel.py) carries `PolicyEvent`s: a new version (`PolicyPublished`)
or a decision (`RolloutDecision`: canary, promote, roll back, refuse, set the canary fraction). Every process that
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flywheel.channel import event_id, event_time
from flywheel.v1 import events_pb2

log = logging.getLogger(__name__)

SNAPSHOT = "rollout.json"
BASE_VERSION = "base"
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


def parent_of(state: RolloutState) -> str | None:
    """The version the next round trains from: the canary, else the stable; None before any event."""
    if not state.seen:
        return None
    return state.canary or state.stable


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
