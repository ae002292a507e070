"""TrainerService: ingestion and rounds in background threads, controls and status for operators.

Knows nothing of gRPC or HTTP. On start it recovers from a kill: rounds left 'running' are marked
failed (and their feedback still counts as new), half-written versions were removed by the
store, and a version that reached the store but was never announced on Kafka is announced now.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from kafka.errors import KafkaError

from flywheel.channel import PolicySender
from flywheel.settings import TrainerSettings
from flywheel.store import Manifest, ModelStore
from trainer.context import CANDIDATE_KEY, REWARD_MODEL_KEY, RoundContext, RoundResult
from trainer.dataset import DatasetStore
from trainer.ingest import Ingestor
from trainer.lock import DatasetLock
from trainer.metrics import TrainerMetrics
from trainer.records import RoundRecord
from trainer.rollout import RolloutController
from trainer.round import available_pairs, current_policy, run_round

log = logging.getLogger(__name__)

ANNOUNCED_KEY = "announced:"
UNHEALTHY_AFTER_FAILURES = 3  # a loop's steps failing this many times in a row make /healthz say so


@dataclass
class TrainerStatus:
    paused: bool
    round_running: bool
    events_ingested: int
    pairs_available: int
    new_feedback_since_round: int
    published_version: str
    recent_rounds: list[RoundRecord] = field(default_factory=list)
    feedback_waiting: int = 0
    reward_model: str = ""
    stable_version: str = ""
    canary_version: str = ""
    rollout_verdict: str = ""
    policy_candidate: str = ""  # a refused round's policy the next round's PPO continues from
    ai_verdicts: int = 0  # pairs an AI judge gave (trainer/judge.py): never counted as people's feedback
    # The least agreeing users of the last assessment (trainer/raters.py), worst first.
    raters: list[dict] = field(default_factory=list)


class PolicyAnnouncer:
    """Announces versions on the policy channel; a version counts as announced once Kafka has it."""

    def __init__(self, bootstrap: str, store: DatasetStore) -> None:
        self.sender = PolicySender(bootstrap)
        self.store = store

    def __call__(self, manifest: Manifest) -> None:
        self.sender.announce(manifest)  # raises KafkaError: the version stays pending, announced on start
        self.store.set_state(ANNOUNCED_KEY + manifest.version, "1")

    def announce_pending(self, policies: ModelStore) -> None:
        for manifest in policies.versions():
            if not self.store.get_state(ANNOUNCED_KEY + manifest.version):
                self(manifest)

    def close(self) -> None:
        self.sender.close()


class TrainerService:
    """The trainer of one dataset: it holds the dataset's lock (DatasetLocked if another trainer does)."""

    def __init__(
        self, settings: TrainerSettings, base_model: str, metrics: TrainerMetrics | None = None, grpc_address: str = ""
    ) -> None:
        self.lock = DatasetLock(settings.lock_path)
        self.lock.acquire(grpc_address)
        try:
            self._open(settings, base_model, metrics)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, settings: TrainerSettings, base_model: str, metrics: TrainerMetrics | None) -> None:
        import torch

        from trainer import hardware, pacing

        torch.set_num_threads(settings.torch_threads)
        hardware.configure(settings.device)
        self.settings = settings
        self.metrics = metrics or TrainerMetrics()
        if hardware.device().type == "cpu":  # a GPU trainer does not take serving's cores
            pacer = pacing.install(settings.duty_cycle)
            if pacer is not None:
                self.metrics.yielded_seconds.set_function(lambda: pacer.slept_s)
        self.dataset = DatasetStore(settings.dataset_path)
        abandoned = self.dataset.abandon_running_rounds()
        if abandoned:
            log.warning("%d round(s) were cut short by a stop; their feedback will train the next round", abandoned)
        self.announcer = PolicyAnnouncer(settings.kafka_bootstrap, self.dataset)
        policies = ModelStore(settings.store_dir)
        self.controller = RolloutController(settings, self.dataset, policies, self.metrics)
        self.context = RoundContext(
            settings=settings,
            base_model=base_model,
            dataset=self.dataset,
            policies=policies,
            reward_models=ModelStore(settings.reward_store_dir),
            announce=self.announcer,
            metrics=self.metrics,
            parent=self.controller.parent,
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._paused = False
        self._round_running = False
        self._requests: list[tuple[bool, Future[RoundResult]]] = []  # operators' triggers: reward_only, result
        self._last_round_at = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._pairs_cache: tuple[tuple, int] | None = None  # (events, parent, rounds) -> pairs available
        self._loop_failures = {"ingest": 0, "rounds": 0}  # failures in a row, per loop
        self._loop_errors = {"ingest": "", "rounds": ""}
        self.ingestor: Ingestor | None = None

    # -- lifecycle

    def start(self) -> None:
        self.controller.start()
        for name, target in (("ingest", self._ingest_loop), ("rounds", self._round_loop)):
            thread = threading.Thread(target=target, name=f"trainer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5 if thread.name == "trainer-ingest" else 0.1)
        self.controller.stop()
        self.announcer.close()
        with self._lock:
            waiting, self._requests = self._requests, []
        for _, future in waiting:
            future.set_exception(RuntimeError("the trainer stopped before the requested round ran"))
        self.lock.release()

    # -- operator controls

    def trigger(self, reward_only: bool = False) -> tuple[bool, str]:
        """Ask for a round now; refused while one runs."""
        with self._lock:
            if self._round_running:
                return False, "a round is running; try again when it ends"
        self.request_round(reward_only)
        return True, "round requested" + (" (reward model only)" if reward_only else "")

    def request_round(self, reward_only: bool = False) -> Future[RoundResult]:
        """Queue a round (after the running one, if any); the future holds its result."""
        future: Future[RoundResult] = Future()
        with self._lock:
            self._requests.append((reward_only, future))
        self._wake.set()
        return future

    def pause(self) -> bool:
        with self._lock:
            self._paused = True
        self.metrics.paused.set(1)
        return True

    def resume(self) -> bool:
        with self._lock:
            self._paused = False
        self.metrics.paused.set(0)
        self._wake.set()
        return False

    def _pairs_available(self, events: int) -> int:
        """How many pairs the stored feedback gives now; rebuilt only when events or rounds were added.

        Building the pairs reads every rating and comparison: on each /status request (the operator
        page polls it) that cost grew with the dataset.
        """
        parent = current_policy(self.context)[0]
        newest = self.dataset.rounds(1)
        key = (events, parent, (newest[0].round, newest[0].finished_at) if newest else None)
        if self._pairs_cache is None or self._pairs_cache[0] != key:
            self._pairs_cache = (key, len(available_pairs(self.context, parent)))
        return self._pairs_cache[1]

    def status(self) -> TrainerStatus:
        counts = self.dataset.count_events()
        latest = self.context.policies.latest()
        return TrainerStatus(
            paused=self._paused,
            round_running=self._round_running,
            events_ingested=sum(counts.values()),
            pairs_available=self._pairs_available(sum(counts.values())),
            new_feedback_since_round=self.dataset.count_feedback(self.dataset.last_round_seq()),
            published_version=latest.version if latest else "",
            recent_rounds=self.dataset.rounds(10),
            feedback_waiting=self.dataset.waiting_feedback(),
            reward_model=self.dataset.get_state(REWARD_MODEL_KEY),
            policy_candidate=self.dataset.get_state(CANDIDATE_KEY),
            stable_version=self.controller.state.stable,
            canary_version=self.controller.state.canary,
            rollout_verdict=self.controller.last_verdict.reason if self.controller.last_verdict else "",
            ai_verdicts=counts.get("ai_pair", 0),
            raters=[
                {"user": user, "judgements": n, "agreement": agreement, "excluded": excluded}
                for user, n, agreement, excluded in self.dataset.raters()[:20]
            ],
        )

    # -- the two loops

    def health(self) -> str:
        """'' when both loops run; else what is wrong (for /healthz: a dead loop must not look healthy)."""
        for thread in self._threads:
            if not thread.is_alive() and not self._stop.is_set():
                return f"the {thread.name} loop has stopped"
        for loop, what in (("ingest", "ingestion"), ("rounds", "the round loop")):
            if self._loop_failures[loop] >= UNHEALTHY_AFTER_FAILURES:
                return f"{what} failed {self._loop_failures[loop]} times in a row: {self._loop_errors[loop]}"
        return ""

    def _loop_failed(self, loop: str, exc: BaseException) -> None:
        """Count a failure of a loop's step and back off; the loop goes on (SQLite busy or full, a bug)."""
        self._loop_failures[loop] += 1
        self._loop_errors[loop] = f"{type(exc).__name__}: {exc}"
        self.metrics.loop_errors.labels(loop).inc()
        log.error("the %s loop failed (%d in a row): %s", loop, self._loop_failures[loop], self._loop_errors[loop],
                  exc_info=self._loop_failures[loop] == 1)  # fmt: skip
        self._stop.wait(min(30.0, 2.0 ** self._loop_failures[loop]))

    def _ingest_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.ingestor is None:
                    self.ingestor = Ingestor.connect(self.settings.kafka_bootstrap, self.dataset, self.metrics)
                if self.ingestor.poll(timeout_ms=500):
                    self._wake.set()
                self._loop_failures["ingest"] = 0
            except KafkaError as exc:
                log.warning("Kafka unavailable (%s); retrying", exc)
                if self.ingestor is not None:
                    self.ingestor.close()
                    self.ingestor = None
                self._stop.wait(2)
            except Exception as exc:  # the store (disk full, locked) or a bug: read again from the saved place
                if self.ingestor is not None:
                    self.ingestor.close()
                    self.ingestor = None
                self._loop_failed("ingest", exc)
        if self.ingestor is not None:
            self.ingestor.close()

    def _due(self) -> tuple[bool, Future[RoundResult] | None] | None:
        """(reward_only, the requester's future) of the round to run now, or None when none is due."""
        with self._lock:
            if self._requests:
                return self._requests.pop(0)
            if self._paused:
                return None
        new = self.dataset.count_feedback(self.dataset.last_round_seq())
        self.metrics.new_feedback.set(new)
        self.metrics.feedback_waiting.set(self.dataset.waiting_feedback())
        rounds = self.settings.rounds
        if new >= rounds.min_new_feedback:
            return False, None
        interval = rounds.interval_s
        if interval > 0 and new > 0 and time.monotonic() - self._last_round_at >= interval:
            return False, None
        return None

    def _round_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._round_step()
                self._loop_failures["rounds"] = 0
            except Exception as exc:
                self._loop_failed("rounds", exc)

    def _round_step(self) -> None:
        """Announce what is pending, then run the round that is due (if any)."""
        try:
            self.announcer.announce_pending(self.context.policies)
        except KafkaError as exc:
            log.warning("cannot announce published versions yet: %s", exc)
        due = self._due()
        if due is None:
            self._wake.wait(timeout=5)
            self._wake.clear()
            return
        reward_only, future = due
        try:
            result = self.run_round(reward_only)
        except BaseException as exc:
            if future is not None:
                future.set_exception(exc)
            raise
        if future is not None:
            future.set_result(result)

    def run_round(self, reward_only: bool = False) -> RoundResult:
        with self._lock:
            self._round_running = True
        try:
            return run_round(self.context, reward_only)
        finally:
            with self._lock:
                self._round_running = False
            self._last_round_at = time.monotonic()

    def catch_up(self) -> None:
        """Ingest everything on the topics now (for `flywheel train --once`)."""
        ingestor = Ingestor.connect(self.settings.kafka_bootstrap, self.dataset, self.metrics)
        try:
            result = ingestor.catch_up()
            log.info("ingested %d new events (%d replays)", result.stored, result.duplicates)
        finally:
            ingestor.close()
