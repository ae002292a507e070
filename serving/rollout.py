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

from flywheel.channel import FULL_KIND, PolicyLog, decision_event, event_time
from flywheel.rollout import fold, read_snapshot
from flywheel.settings import ServingSettings
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2
from serving.metrics import ServingMetrics
from serving.operator import OperatorActions
from serving.policy import PolicyRouter, ServedPolicy
from serving.versions import RefusedVersion, VersionInfo, check_version
from serving.weights import FullWeightSwaps

log = logging.getLogger(__name__)

Action = events_pb2.RolloutAction
CATCH_UP_S = 20.0


class PolicyReceiver(FullWeightSwaps, OperatorActions):
    """One replica's side of the roll-out: folds the policy topic and converges the engine on it.

    Full-weight reloads are serving/weights.py's (FullWeightSwaps); operators' verbs and views,
    serving/operator.py's (OperatorActions).
    """

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

def receiver_store(settings: ServingSettings) -> ModelStore:
    """The model store as a reader sees it (replicas never write it)."""
    return ModelStore(Path(settings.store_dir), readonly=True)
