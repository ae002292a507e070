"""Full-weight policy versions: where they go, and the engine's weights reloaded in place.

A full-weight version (manifest kind "full", from `flywheel merge`) replaces the engine's weights,
so one replica serves one of them at a time: the stable's on every replica, and a canary's on the
share of replicas its fraction names (DESIGN.md: canary across replicas). What is checked before
a reload is in serving/versions.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container
from pathlib import Path

from flywheel.channel import ADAPTER_KIND, FULL_KIND
from flywheel.rollout import RolloutState
from flywheel.store import StoreError
from serving.policy import PolicyRouter, ServedPolicy
from serving.versions import RefusedVersion, VersionInfo, check_version, tensor_specs

log = logging.getLogger(__name__)

DRAIN_S = 120.0  # longest wait for requests on the old weights to finish before a full-weight reload


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


class FullWeightSwaps:
    """Mixed into PolicyReceiver: which weights this replica's engine should hold, and the swap."""

    def _kind(self, version: str) -> str:
        if version not in self._kinds:
            try:
                self._kinds[version] = self.store.manifest(version).kind
            except StoreError:
                return ADAPTER_KIND  # not in the store (yet): the adapter path refuses it with the reason
        return self._kinds[version]

    def _wanted_weights(self) -> str:
        bucket = PolicyRouter.bucket(self.replica_id)
        return wanted_weights(self.state, self._kind, self.refused, bucket, self.settings.policy_version)

    async def _follow_weights(self) -> None:
        while (wanted := self._wanted_weights()) != self.weights:
            try:
                await self._reload(wanted)
            except RefusedVersion as exc:
                if wanted == self.settings.policy_version:
                    log.error("could not reload the base weights: %s", exc)
                    return
                await self._refuse(wanted, exc)  # folded at once: the next wanted weights differ

    def _check_full(self, version: str) -> VersionInfo:
        if self._served_specs is None:
            if self.model_path is None:
                raise RefusedVersion("kind", f"version {version} is full-weight; this replica has no base model path")
            self._served_specs = tensor_specs(Path(self.model_path))
        return check_version(self.store, version, self.settings.max_lora_rank, self._served_specs)

    async def _reload(self, version: str) -> None:
        """Swap the engine's weights for `version`'s, with no request running on either side of the swap."""
        base = self.settings.policy_version
        started = time.perf_counter()
        if version == base:
            info, path = self.versions.get(base, VersionInfo(base)), Path(self.model_path or "")
        else:
            info, path = await asyncio.to_thread(self._check_full, version), self.store.path(version)
        router = self.router
        router.close()  # new requests wait; those running finish on the weights they started on
        try:
            deadline = time.monotonic() + DRAIN_S
            while router.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if router.in_flight:
                log.warning("requests still running after %.0f s; reloading under them", DRAIN_S)
            try:
                paused = await reload_in_place(self.engine, path)
            except Exception as exc:
                self.metrics.swap_failures.inc()
                raise RefusedVersion("load_failed", f"version {version}: the engine could not reload ({exc})") from None
            router.loaded.pop(self.weights, None)
            if version != base:  # adapters are trained on the base weights: none of them fits these
                for name in [v for v, p in router.loaded.items() if p.lora is not None]:
                    del router.loaded[name]
            policy = ServedPolicy(version)
            router.loaded[version] = policy
            self.weights = version
            if router.stable.version not in router.loaded:
                router.stable = policy
            if router.canary is not None and router.canary.version not in router.loaded:
                router.canary = None
        finally:
            router.open()
        await self._warm_up(policy)
        info.loaded_at = time.time()
        self.versions[version] = info
        published = self._published_at.pop(version, None)
        if published is not None:
            info.swap_seconds = max(0.0, time.time() - published)
            self.metrics.swap_seconds.observe(info.swap_seconds)
        log.info(
            "engine weights are now %s (%.2f s, engine paused %.2f s)", version, time.perf_counter() - started, paused
        )
