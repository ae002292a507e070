"""The policy receiver: follows flywheel.policy.v1 and hot-swaps versions into the running engine.

Every event is folded into the roll-out state (flywheel/rollout.py); the replica then converges on
it: the stable and canary versions loaded (checked file by file against the manifest, loaded as a
LoRA adapter under a name and id never used before, warmed up with one request) and routed.
Full-weight versions replace the engine's own weights in place (serving/weights.py): the stable's
on every replica, a canary's on the share of replicas its fraction names. A version that fails a
check (serving/versions.py) is refused: never served, counted, logged and announced with a
`RolloutDecision` (REFUSE) that every replica folds. Operators' actions go through the same topic,
so every replica obeys them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
import uuid
from pathlib import Path

from kafka.errors import KafkaError
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest

from flywheel.channel import ADAPTER_KIND, FULL_KIND, PolicyLog, decision_event, event_time
from flywheel.rollout import fold, read_snapshot
from flywheel.settings import ServingSettings
from flywheel.store import ModelStore, StoreError
from flywheel.v1 import events_pb2
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.versions import RefusedVersion, VersionInfo, check_version, tensor_specs
from serving.weights import reload_in_place, wanted_weights

log = logging.getLogger(__name__)

Action = events_pb2.RolloutAction
CATCH_UP_S = 20.0
DRAIN_S = 120.0  # longest wait for requests on the old weights to finish before a full-weight reload


class PolicyReceiver:
    def __init__(
        self,
        engine,
        router: PolicyRouter,
        store: ModelStore,
        settings: ServingSettings,
        metrics: ServingMetrics,
        model_path: str | None = None,
    ) -> None:
        self.engine = engine
        self.model_path = model_path  # the served model's weights: what "base" reloads
        self.weights = settings.policy_version  # whose weights the engine holds now
        self._served_specs: dict | None = None
        self._kinds: dict[str, str] = {settings.policy_version: "base"}
        self.router = router
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.replica_id = settings.replica_id or f"{socket.gethostname()}:{settings.port}"
        self.state = read_snapshot(store.root, settings.canary_fraction)
        self.refused: dict[str, str] = {}
        self.versions: dict[str, VersionInfo] = {settings.policy_version: VersionInfo(settings.policy_version)}
        self.log: PolicyLog | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._published_at: dict[str, float] = {}

    # -- life cycle

    async def start(self, follow: bool) -> None:
        """Converge on the store's snapshot, then follow the topic (replays are folded idempotently)."""
        self._loop = asyncio.get_running_loop()
        async with self._lock:
            await self._converge()
        if follow:
            self.log = PolicyLog(self.settings.kafka_bootstrap, self._from_thread, self.replica_id,
                                 on_skip=self.metrics.policy_records_skipped.inc).start()  # fmt: skip
            # Ready only once the topic's history is folded in: a restarted replica comes back on
            # the versions the others serve (bounded: a broker that is down does not block start-up).
            if not await asyncio.to_thread(self.log.wait_caught_up, CATCH_UP_S):
                log.warning("policy topic not read to its end within %.0f s; starting on the snapshot", CATCH_UP_S)

    async def stop(self) -> None:
        if self.log is not None:
            await asyncio.to_thread(self.log.stop)

    def _from_thread(self, event: events_pb2.PolicyEvent) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.handle(event), self._loop).result()

    # -- events

    async def handle(self, event: events_pb2.PolicyEvent) -> None:
        async with self._lock:
            before = self.state
            self.state = fold(self.state, event)
            if self.state is before:
                return
            if event.HasField("published") and self.state.canary == before.canary:
                pass  # announced again (the trainer re-announces what the store holds): nothing to do
            elif event.HasField("published"):
                self._published_at[event.published.version] = event_time(event)
                log.info("version %s published (parent %s)", event.published.version, event.published.parent_version)
            else:
                d = event.decision
                action = Action.Name(d.action).removeprefix("ROLLOUT_ACTION_").lower()
                self.metrics.rollout_decisions.labels(action, d.decided_by or "unknown").inc()
                log.info(
                    "roll-out decision %s %s by %s: %s",
                    Action.Name(d.action), d.version or "-", d.decided_by or "?", d.reason or "-",
                )  # fmt: skip
            await self._converge()

    async def decide(self, event: events_pb2.PolicyEvent) -> None:
        """An operator's decision: publish it for every replica (acks=all), then obey it here too."""
        if self.log is not None:
            await asyncio.to_thread(self.log.publish, event)
        await self.handle(event)

    async def load(self, version: str) -> ServedPolicy:
        """Load a version for pinned requests (evaluation) without routing users to it."""
        async with self._lock:
            policy = await self._ensure_loaded(version)
            if policy is None and version in self.refused:
                raise RefusedVersion("refused", f"version {version} was refused: {self.refused[version]}")
            if policy is None and self._kind(version) == FULL_KIND:
                raise RefusedVersion(
                    "not_here", f"version {version} has full weights; a replica serves one such version at a time, "
                    "as its stable or canary: promote it or make it the canary instead"
                )  # fmt: skip
            if policy is None:
                raise RefusedVersion(
                    "not_here", f"version {version} is an adapter on the base model; this replica's engine holds "
                    f"the full weights of {self.weights}"
                )  # fmt: skip
            self._evict()
            return policy

    # -- operators' actions (PolicyService, the admin HTTP routes): (ok, message)

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

    # -- converging on the state

    async def _converge(self) -> None:
        await self._follow_weights()
        state, router = self.state, self.router
        if state.stable != router.stable.version or router.stable.version not in router.loaded:
            stable = await self._ensure_loaded(state.stable)
            if stable is None and router.stable.version not in router.loaded:
                stable = router.loaded[self.weights]  # the stable is not servable on these weights
            if stable is not None and stable is not router.stable:
                log.info("stable is now %s (was %s)", stable.version, router.stable.version)
                router.stable = stable
        canary = None
        while self.state.canary and self.state.canary != router.stable.version:
            wanted = self.state.canary
            canary = await self._ensure_loaded(wanted)
            if canary is not None or self.state.canary == wanted:
                break  # else the refusal was folded in: its fallback (or none) is the canary now
        state = self.state
        if canary is not None and (router.canary is None or router.canary.version != canary.version):
            published = self._published_at.pop(canary.version, None)
            if published is not None:
                took = max(0.0, time.time() - published)
                self.versions[canary.version].swap_seconds = took
                self.metrics.swap_seconds.observe(took)
            log.info("canary is now %s at %.0f%% of users", canary.version, 100 * state.canary_fraction)
        router.canary = canary
        router.canary_fraction = state.canary_fraction
        self._evict()
        self._export_metrics()

    async def _ensure_loaded(self, version: str) -> ServedPolicy | None:
        """The version ready to serve; None when refused, or when it cannot run on the engine's weights."""
        if version in self.router.loaded:
            return self.router.loaded[version]
        if version in self.refused:
            return None
        if self._kind(version) == FULL_KIND or self.weights != self.settings.policy_version:
            return None  # another replica's full weights, or an adapter (trained on the base) over full weights
        started = time.perf_counter()
        try:
            info = await asyncio.to_thread(check_version, self.store, version, self.settings.max_lora_rank)
            lora = LoRARequest(
                lora_name=f"{version}-{uuid.uuid4().hex[:8]}",
                lora_int_id=next(self._ids),
                lora_path=str(self.store.path(version)),
            )
            try:
                await self.engine.add_lora(lora)
            except Exception as exc:
                raise RefusedVersion(
                    "load_failed", f"version {version}: the engine refused the adapter ({exc})"
                ) from None
            policy = ServedPolicy(version, lora)
            try:
                await self._warm_up(policy)
            except Exception as exc:
                await self._remove(policy)
                raise RefusedVersion("warmup_failed", f"version {version}: warm-up request failed ({exc})") from None
        except RefusedVersion as exc:
            await self._refuse(version, exc)
            return None
        info.loaded_at = time.time()
        self.versions[version] = info
        self.router.loaded[version] = policy
        log.info("loaded %s in %.0f ms", version, 1000 * (time.perf_counter() - started))
        return policy

    # -- full-weight versions

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

    async def _warm_up(self, policy: ServedPolicy) -> None:
        sampling = SamplingParams(max_tokens=1, temperature=0.0)
        request_id = f"warmup-{policy.version}-{uuid.uuid4().hex[:8]}"
        async for _ in self.engine.generate(TokensPrompt(prompt_token_ids=[1, 2, 3]), sampling, request_id,
                                            lora_request=policy.lora):  # fmt: skip
            pass

    async def _refuse(self, version: str, exc: RefusedVersion) -> None:
        log.error("refusing policy version %s: %s", version, exc)
        # The reason is shown by GET /v1/policy and sent on the policy topic: no file system paths
        # (an engine's or safetensors' error may name the version's directory).
        reason = str(exc).replace(str(self.store.root.resolve()), "<store>").replace(str(self.store.root), "<store>")
        if self.model_path:
            reason = reason.replace(str(self.model_path), "<model>")
        exc = RefusedVersion(exc.reason, reason)
        self.refused[version] = str(exc)
        self.metrics.refused_versions.labels(exc.reason).inc()
        if exc.reason in ("load_failed", "warmup_failed"):
            self.metrics.swap_failures.inc()
        event = decision_event(
            Action.ROLLOUT_ACTION_REFUSE, version, state=self.state, reason=str(exc), decided_by=self.replica_id
        )
        self.state = fold(self.state, event)  # obeyed here at once; the others fold it from the topic
        if self.log is None:
            return
        try:
            await asyncio.to_thread(self.log.publish, event)
        except KafkaError as error:
            log.warning("could not announce the refusal of %s: %s", version, error)

    def _evict(self) -> None:
        for policy in self.router.evictable(self.settings.max_loaded_versions):
            del self.router.loaded[policy.version]
            asyncio.get_running_loop().create_task(self._remove(policy))
            log.info("unloaded %s (more than %d versions loaded)", policy.version, self.settings.max_loaded_versions)

    async def _remove(self, policy: ServedPolicy) -> None:
        if policy.lora is None:
            return
        try:
            await self.engine.remove_lora(policy.lora.lora_int_id)
        except Exception as exc:
            log.warning("could not unload %s: %s", policy.version, exc)

    def _export_metrics(self) -> None:
        m = self.metrics
        m.versions_loaded.set(len(self.router.loaded))
        m.canary_fraction.set(self.router.canary_fraction if self.router.canary else 0.0)
        m.policy_info.clear()
        for version in self.router.loaded:
            m.policy_info.labels(version, self.router.role(version)).set(1)

    # -- what operators see

    def status(self) -> dict:
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

    def _describe(self, version: str, role: str) -> dict:
        info = self.versions.get(version, VersionInfo(version))
        return {
            "version": version,
            "state": role,
            "parent_version": info.parent,
            "kind": info.kind or ("base" if version == self.settings.policy_version else ""),
            "metrics": info.metrics,
            "swap_seconds": info.swap_seconds,
        }

    def list_versions(self) -> list[dict]:
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
            entry.update(parent_version=manifest.parent, kind=manifest.kind, metrics=dict(manifest.metrics))
            entry["created_at"] = manifest.created_at
            if v in self.state.retired:
                entry["note"] = self.state.retired[v]
            described.append(entry)
        return described


def receiver_store(settings: ServingSettings) -> ModelStore:
    """The model store as a reader sees it (replicas never write it)."""
    return ModelStore(Path(settings.store_dir), readonly=True)
