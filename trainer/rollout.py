"""The roll-out controller: live thumbs decide whether the canary is promoted or rolled back.

It runs in the trainer (one per deployment, beside the feedback it already stores) and decides with a
Beta-Binomial rule: each side's thumbs-up rate gets a Beta(1 + up, 1 + down) posterior, counted
over the same window (since the canary went live), and

- nothing is decided until both sides have `min_samples` thumbs;
- P(canary's rate > stable's) ≥ `promote_probability` (0.95): promote;
- that probability ≤ `rollback_probability` (0.05): roll back;
- both sides past `max_samples` with neither: roll back (no clear gain; stable stays).

Looking again after every few thumbs makes wrong calls likelier than the 5 % a single look gives;
the minimum sample and the cap bound that, and every decision records its counts and probability.
Decisions go to `flywheel.policy.v1` as `RolloutDecision`s, which every replica folds.

The trainer also keeps the roll-out snapshot (`rollout.json` in the model store) that replicas read
at start, and trains each round from the canary (or the stable version when there is none).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from kafka.errors import KafkaError

from flywheel.rollout import PolicyLog, decision_event, fold, read_snapshot, write_snapshot
from flywheel.settings import RolloutSection, TrainerSettings
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)

Action = events_pb2.RolloutAction


def probability_b_beats_a(up_a: int, down_a: int, up_b: int, down_b: int) -> float:
    """P(θ_b > θ_a) for θ ~ Beta(1 + up, 1 + down), exactly (Evan Miller's sum over b's successes)."""
    alpha_a, beta_a, alpha_b, beta_b = 1 + up_a, 1 + down_a, 1 + up_b, 1 + down_b

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    total = 0.0
    for i in range(alpha_b):
        total += math.exp(
            log_beta(alpha_a + i, beta_a + beta_b) - math.log(beta_b + i) - log_beta(1 + i, beta_b)
            - log_beta(alpha_a, beta_a)
        )  # fmt: skip
    return min(1.0, max(0.0, total))


@dataclass(frozen=True)
class Verdict:
    action: int  # ROLLOUT_ACTION_PROMOTE, ROLLOUT_ACTION_ROLLBACK or UNSPECIFIED (wait)
    reason: str
    statistics: dict[str, float]


def judge(canary: tuple[int, int], stable: tuple[int, int], rule: RolloutSection) -> Verdict:
    """The decision for (up, down) thumbs of each side, by the rule in this module's docstring."""
    (up_c, down_c), (up_s, down_s) = canary, stable
    p = probability_b_beats_a(up_s, down_s, up_c, down_c)
    stats = {"canary_up": up_c, "canary_down": down_c, "stable_up": up_s, "stable_down": down_s,
             "p_canary_better": p}  # fmt: skip
    n_c, n_s = up_c + down_c, up_s + down_s
    rates = f"canary {up_c}/{n_c} up, stable {up_s}/{n_s} up, P(canary better) = {p:.3f}"
    if min(n_c, n_s) < rule.min_samples:
        waiting = f"waiting for {rule.min_samples} thumbs a side: {rates}"
        return Verdict(Action.ROLLOUT_ACTION_UNSPECIFIED, waiting, stats)
    if p >= rule.promote_probability:
        return Verdict(Action.ROLLOUT_ACTION_PROMOTE, f"canary better: {rates}", stats)
    if p <= rule.rollback_probability:
        return Verdict(Action.ROLLOUT_ACTION_ROLLBACK, f"canary worse: {rates}", stats)
    if min(n_c, n_s) >= rule.max_samples:
        return Verdict(Action.ROLLOUT_ACTION_ROLLBACK, f"no clear gain after {rule.max_samples} a side: {rates}", stats)
    return Verdict(Action.ROLLOUT_ACTION_UNSPECIFIED, f"undecided: {rates}", stats)


class RolloutController:
    """Folds the policy topic (keeping the snapshot) and decides on the canary every few seconds."""

    def __init__(
        self, settings: TrainerSettings, dataset: DatasetStore, policies: ModelStore, metrics: TrainerMetrics
    ) -> None:
        self.settings = settings
        self.rule = settings.rollout
        self.dataset = dataset
        self.policies = policies
        self.metrics = metrics
        self.state = read_snapshot(policies.root, settings.canary_fraction)
        self.log = PolicyLog(settings.kafka_bootstrap, self._on_event, "trainer")
        self.last_verdict: Verdict | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RolloutController:
        self.log.start()
        self._thread = threading.Thread(target=self._run, name="rollout-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.log.stop()

    def _on_event(self, event: events_pb2.PolicyEvent) -> None:
        with self._lock:
            state = fold(self.state, event)
            if state is self.state:
                return
            self.state = state
            write_snapshot(self.policies.root, state)
        if event.HasField("decision") and event.decision.action != Action.ROLLOUT_ACTION_SET_CANARY_FRACTION:
            d = event.decision
            self.metrics.rollout_decisions.labels(Action.Name(d.action).removeprefix("ROLLOUT_ACTION_").lower()).inc()

    def _run(self) -> None:
        while not self._stop.wait(self.rule.check_interval_s):
            try:
                self.check()
            except KafkaError as exc:
                log.warning("could not publish a roll-out decision (%s); will retry", exc)
            except Exception:
                log.exception("roll-out check failed")

    def check(self) -> Verdict | None:
        """Count the thumbs of the current canary and stable, and act on the verdict."""
        with self._lock:
            state = self.state
        if not state.canary:
            self.last_verdict = None
            return None
        since = state.canary_since
        canary = self.dataset.thumbs(state.canary, since)
        stable = self.dataset.thumbs(state.stable, since)
        verdict = judge(canary, stable, self.rule)
        self.last_verdict = verdict
        self.metrics.rollout_probability.set(verdict.statistics["p_canary_better"])
        for side, (up, down) in (("canary", canary), ("stable", stable)):
            self.metrics.rollout_thumbs.labels(side, "up").set(up)
            self.metrics.rollout_thumbs.labels(side, "down").set(down)
        if verdict.action == Action.ROLLOUT_ACTION_UNSPECIFIED or not self.rule.enabled:
            return verdict
        log.info("roll-out: %s %s (%s)", Action.Name(verdict.action), state.canary, verdict.reason)
        event = decision_event(verdict.action, state.canary, state=state, reason=verdict.reason,
                               decided_by="controller", statistics=verdict.statistics)  # fmt: skip
        self.log.publish(event)
        self._on_event(event)
        return verdict

    def parent(self) -> str:
        """The version the next round trains from: the canary, else the stable version."""
        with self._lock:
            return self.state.canary or self.state.stable


def trained_parent(policies: ModelStore) -> str | None:
    """The version to continue from per the snapshot (canary, else stable); None when none was recorded."""
    state = read_snapshot(policies.root, 0.0)
    if not state.seen:
        return None
    return state.canary or state.stable
