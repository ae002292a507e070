"""Full-weight policy versions: where they go, and the engine's weights reloaded in place.

A full-weight version (manifest kind "full", from `flywheel merge`) replaces the engine's weights,
so one replica serves one of them at a time: the stable's on every replica, and a canary's on the
share of replicas its fraction names (DESIGN.md: canary across replicas). What is checked before
a reload is in serving/versions.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from pathlib import Path

from flywheel.channel import FULL_KIND
from flywheel.rollout import RolloutState

log = logging.getLogger(__name__)


def wanted_weights(state: RolloutState, kind: Callable[[str], str], refused: Container[str], bucket: float,
                   base: str) -> str:  # fmt: skip
    """The version whose full weights a replica should hold: a full canary when the replica's
    `bucket` (a stable hash of its id, in [0, 1)) falls under the canary fraction, else a full
    stable, else the base."""
    canary, stable = state.canary, state.stable
    if canary and canary not in refused and kind(canary) == FULL_KIND and bucket < state.canary_fraction:
        return canary
    if stable not in refused and kind(stable) == FULL_KIND:
        return stable
    return base


async def reload_in_place(engine, path: Path) -> float:
    """Swap the engine's weights for those in `path`; returns the seconds the engine was paused.

    Requests still queued are frozen (`keep`) and resume on the new weights; the prefix cache and
    running requests' KV are reset, since cached KV from the old weights gives wrong output.
    """
    started = time.perf_counter()
    await engine.pause_generation(mode="keep", clear_cache=False)
    try:
        await engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        await engine.reset_prefix_cache(reset_running_requests=True)
    finally:
        await engine.resume_generation()
    took = time.perf_counter() - started
    log.info("reloaded the engine's weights from %s in %.2f s", path, took)
    return took
