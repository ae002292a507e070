"""The roll-out controller: live thumbs decide whether the canary is promoted or rolled back.

It runs in the trainer (one per deployment, beside the feedback it already stores) and decides with a
Beta-Binomial rule on two signals, both counted since the canary went live, in users, not ratings
(each user one vote, the sign of their net verdict; answers to requests that pinned a version left
out; outside env=local only users with API keys count, `rollout.count_anonymous`):

- thumbs: each side's thumbs-up rate gets a Beta(1 + up, 1 + down) posterior, and the signal is
  P(canary's rate > stable's); it counts once both sides have `min_samples` thumbs;
- head to head (compare mode answers one prompt with both versions): the canary's win rate gets a
  Beta(1 + wins, 1 + losses) posterior, and the signal is P(win rate > 1/2); it counts once
  `min_comparisons` comparisons are in (ties are left out).

A counting signal ≥ `promote_probability` (0.95) with none ≤ `rollback_probability` (0.05):
promote; the reverse: roll back; both: wait. A canary still undecided once a signal has
`max_samples`: roll back (no clear gain; stable stays).

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

from flywheel.channel import PolicyLog, decision_event
from flywheel.rollout import fold, parent_of, read_snapshot, write_snapshot
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


def probability_above_half(wins: int, losses: int) -> float:
    """P(θ > 1/2) for θ ~ Beta(1 + wins, 1 + losses): a binomial tail, exactly."""
    n = wins + losses + 1
    return sum(math.comb(n, k) for k in range(wins + 1)) / 2**n


@dataclass(frozen=True)
class Verdict:
    action: int  # ROLLOUT_ACTION_PROMOTE, ROLLOUT_ACTION_ROLLBACK or UNSPECIFIED (wait)
    reason: str
    statistics: dict[str, float]


def judge(
    canary: tuple[int, int], stable: tuple[int, int], rule: RolloutSection, head_to_head: tuple[int, int] = (0, 0)
) -> Verdict:
    """The decision for (up, down) thumbs of each side and the canary's (wins, losses) against stable.

    Each signal counts once it has its minimum sample; one that calls for promotion while the
    other calls for a roll-back means wait. See the module docstring for the thresholds.
    """
    (up_c, down_c), (up_s, down_s), (wins, losses) = canary, stable, head_to_head
    p_thumbs = probability_b_beats_a(up_s, down_s, up_c, down_c)
    p_h2h = probability_above_half(wins, losses)
    stats = {"canary_up": up_c, "canary_down": down_c, "stable_up": up_s, "stable_down": down_s,
             "p_canary_better": p_thumbs, "canary_wins": wins, "canary_losses": losses,
             "p_canary_wins": p_h2h}  # fmt: skip
    n_c, n_s, n_h = up_c + down_c, up_s + down_s, wins + losses
    rates = (
        f"thumbs up: canary {up_c}/{n_c}, stable {up_s}/{n_s}, P(canary better) = {p_thumbs:.3f}; "
        f"head to head: canary won {wins} of {n_h}, P(canary wins more often) = {p_h2h:.3f}"
    )
    signals = []
    if min(n_c, n_s) >= rule.min_samples:
        signals.append(p_thumbs)
    if n_h >= rule.min_comparisons:
        signals.append(p_h2h)
    if not signals:
        waiting = f"waiting for {rule.min_samples} thumbs a side or {rule.min_comparisons} comparisons: {rates}"
        return Verdict(Action.ROLLOUT_ACTION_UNSPECIFIED, waiting, stats)
    better = any(p >= rule.promote_probability for p in signals)
    worse = any(p <= rule.rollback_probability for p in signals)
    if better and not worse:
        return Verdict(Action.ROLLOUT_ACTION_PROMOTE, f"canary better: {rates}", stats)
    if worse and not better:
        return Verdict(Action.ROLLOUT_ACTION_ROLLBACK, f"canary worse: {rates}", stats)
    if better and worse:
        return Verdict(Action.ROLLOUT_ACTION_UNSPECIFIED, f"the signals disagree: {rates}", stats)
    if min(n_c, n_s) >= rule.max_samples or n_h >= rule.max_samples:
        return Verdict(Action.ROLLOUT_ACTION_ROLLBACK, f"no clear gain after {rule.max_samples}: {rates}", stats)
    return Verdict(Action.ROLLOUT_ACTION_UNSPECIFIED, f"undecided: {rates}", stats)


class RolloutController:
    """Folds the policy topic (keeping the snapshot) and decides on the canary every few seconds."""

    def __init__(
        self, settings: TrainerSettings, dataset: DatasetStore, policies: ModelStore, metrics: TrainerMetrics
    ) -> None:
        self.settings = settings
        self.rule = settings.rollout
        self.local = settings.env == "local"
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
        anonymous = self.rule.count_anonymous if self.rule.count_anonymous is not None else self.local
        canary = self.dataset.thumbs(state.canary, since, anonymous)
        stable = self.dataset.thumbs(state.stable, since, anonymous)
        head_to_head = self.dataset.head_to_head(state.canary, state.stable, since, anonymous)
        verdict = judge(canary, stable, self.rule, head_to_head)
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

    def parent(self) -> str | None:
        """The version the next round trains from: the canary, else the stable; None before any event."""
        with self._lock:
            return parent_of(self.state)
