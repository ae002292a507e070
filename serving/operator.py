"""Operators' verbs on a replica's roll-out (promote, roll back, set the canary fraction) and what
they see (status, versions). Reached from PolicyService (gRPC) and the admin HTTP routes; every
decision goes through the policy topic, so every replica obeys it.
"""

from __future__ import annotations

import asyncio
from typing import TypedDict

from kafka.errors import KafkaError

from flywheel.channel import FULL_KIND, decision_event
from flywheel.v1 import events_pb2
from serving.versions import RefusedVersion, VersionInfo

Action = events_pb2.RolloutAction


class VersionView(TypedDict, total=False):
    """One version as operators see it (GET /v1/policy, /v1/policy/versions, gRPC PolicyService)."""

    version: str
    state: str  # stable | canary | loaded | available | refused | retired
    parent_version: str
    kind: str  # base | lora | full
    algorithm: str  # how the trainer made it: ppo | grpo | dpo | kto ("" for the base and merged weights)
    metrics: dict[str, float]
    swap_seconds: float  # 0 until it was swapped in here
    created_at: float  # versions in the store only
    note: str  # why a retired version was retired


class ReplicaStatus(TypedDict):
    """A replica's roll-out state (GET /v1/policy, gRPC GetStatus)."""

    replica_id: str
    stable_version: str
    canary_version: str
    canary_fraction: float
    engine_weights: str
    loaded: list[VersionView]
    refused: dict[str, str]
    retired: dict[str, str]


class OperatorActions:
    """Mixed into PolicyReceiver: its state, router, store and versions, its `decide` and `load`."""

    # -- actions: (ok, message)

    async def promote(self, version: str = "", reason: str = "") -> tuple[bool, str]:
        version = version or self.state.canary
        if not version:
            return False, "there is no canary to promote; name a version"
        if version == self.router.stable.version:
            return False, f"{version} is already the stable version"
        try:
            if self._kind(version) == FULL_KIND:
                await asyncio.to_thread(self._check_full, version)  # loaded when the decision is folded
            elif version not in self.router.loaded:
                await self.load(version)
        except RefusedVersion as exc:
            return False, str(exc)
        event = decision_event(Action.ROLLOUT_ACTION_PROMOTE, version, state=self.state,
                               reason=reason or "promoted by an operator", decided_by="operator")  # fmt: skip
        return await self._decide(event, f"{version} is now stable")

    async def rollback(self, reason: str = "") -> tuple[bool, str]:
        canary = self.state.canary
        if not canary:
            return False, "there is no canary to roll back"
        event = decision_event(Action.ROLLOUT_ACTION_ROLLBACK, canary, state=self.state,
                               reason=reason or "rolled back by an operator", decided_by="operator")  # fmt: skip
        return await self._decide(event, f"{canary} rolled back; {self.state.stable} serves everyone")

    async def set_canary_fraction(self, fraction: float) -> tuple[bool, str]:
        if not 0.0 <= fraction <= 1.0:
            return False, f"the canary fraction must be between 0 and 1, not {fraction}"
        event = decision_event(
            Action.ROLLOUT_ACTION_SET_CANARY_FRACTION, self.state.canary, state=self.state,
            reason="set by an operator", decided_by="operator", canary_fraction=fraction,
        )  # fmt: skip
        return await self._decide(event, f"canary fraction is now {fraction:g}")

    async def _decide(self, event: events_pb2.PolicyEvent, done: str) -> tuple[bool, str]:
        try:
            await self.decide(event)
        except KafkaError as exc:
            return False, f"the decision could not be published to Kafka ({exc}); nothing changed"
        return True, done

    # -- what operators see

    def status(self) -> ReplicaStatus:
        router, state = self.router, self.state
        return {
            "replica_id": self.replica_id,
            "stable_version": router.stable.version,
            "canary_version": router.canary.version if router.canary else "",
            "canary_fraction": router.canary_fraction,
            "engine_weights": self.weights,
            "loaded": [self._describe(v, router.role(v)) for v in router.loaded],
            "refused": dict(self.refused),
            "retired": dict(state.retired),
        }

    def _describe(self, version: str, role: str) -> VersionView:
        info = self.versions.get(version, VersionInfo(version))
        return {
            "version": version,
            "state": role,
            "parent_version": info.parent,
            "kind": info.kind or ("base" if version == self.settings.policy_version else ""),
            "metrics": info.metrics,
            "swap_seconds": info.swap_seconds,
        }

    def list_versions(self) -> list[VersionView]:
        """Every version in the store (and the base), with its state on this replica."""
        described = [self._describe(self.settings.policy_version, self.router.role(self.settings.policy_version))]
        for manifest in self.store.versions():
            v = manifest.version
            if v in self.router.loaded and (self.router.role(v) != "loaded" or v not in self.state.retired):
                role = self.router.role(v)
            elif v in self.refused:
                role = "refused"
            elif v in self.state.retired:
                role = "retired"
            else:
                role = "available"
            entry = self._describe(v, role)
            entry.update(parent_version=manifest.parent, kind=manifest.kind, metrics=dict(manifest.metrics),
                         algorithm=str(manifest.extra.get("algorithm", "")))  # fmt: skip
            entry["created_at"] = manifest.created_at
            if v in self.state.retired:
                entry["note"] = self.state.retired[v]
            described.append(entry)
        return described
