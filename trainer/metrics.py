"""The trainer's Prometheus metrics, in a registry owned by one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

PHASE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400)
LATENCY_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_ingested = Counter(
            "flywheel_trainer_events_ingested", "Events stored, by kind (replays not counted).", ["kind"], registry=r
        )
        self.events_duplicate = Counter(
            "flywheel_trainer_events_duplicate", "Records already stored (replays), not counted again.", registry=r
        )
        self.events_invalid = Counter(
            "flywheel_trainer_events_invalid", "Records skipped as unusable (undecodable or inconsistent).", registry=r
        )
        self.loop_errors = Counter(
            "flywheel_trainer_loop_errors", "Failed steps of the ingest and round loops.", ["loop"], registry=r
        )
        self.lag = Gauge("flywheel_trainer_ingest_lag", "Records on the broker not yet stored, by topic.", ["topic"],
                         registry=r)  # fmt: skip
        self.feedback_waiting = Gauge(
            "flywheel_trainer_feedback_waiting", "Ratings and comparisons waiting for their completion.", registry=r
        )
        self.new_feedback = Gauge(
            "flywheel_trainer_new_feedback", "Feedback events since the last finished round.", registry=r
        )
        self.pairs = Gauge("flywheel_trainer_pairs", "Preference pairs available, by split.", ["split"], registry=r)
        self.train_pairs = Gauge(
            "flywheel_trainer_train_pairs", "Training pairs of the last round by origin (human or ai, as weighted).",
            ["origin"], registry=r,
        )  # fmt: skip
        self.raters = Gauge(
            "flywheel_trainer_raters", "Users assessed by the last round: kept, or excluded (disagree beyond chance).",
            ["state"], registry=r,
        )  # fmt: skip
        self.judge_verdicts = Counter(
            "flywheel_trainer_judge_verdicts", "AI judge comparisons by outcome (pair, tie, unparsed).", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.phase_seconds = Histogram(
            "flywheel_trainer_round_phase_seconds", "Duration of each round phase.", ["phase"],
            buckets=PHASE_BUCKETS, registry=r,
        )  # fmt: skip
        self.round_seconds = Histogram(
            "flywheel_trainer_round_seconds", "Duration of whole rounds.", buckets=PHASE_BUCKETS, registry=r
        )
        self.rounds = Counter("flywheel_trainer_rounds", "Rounds finished, by outcome.", ["outcome"], registry=r)
        self.gates = Counter(
            "flywheel_trainer_gate_results", "Gate checks, by gate and result.", ["gate", "result"], registry=r
        )
        self.round_running = Gauge("flywheel_trainer_round_running", "1 while a round runs.", registry=r)
        self.yielded_seconds = Gauge(
            "flywheel_trainer_yielded_seconds",
            "Seconds the trainer paused its compute for other processes (the duty cycle, trainer/pacing.py).",
            registry=r,
        )
        self.paused = Gauge("flywheel_trainer_paused", "1 while rounds are paused by an operator.", registry=r)
        self.reward_loss = Gauge("flywheel_trainer_reward_model_loss", "Last reward-model training loss.", registry=r)
        self.reward_accuracy = Gauge(
            "flywheel_trainer_reward_model_heldout_accuracy", "Held-out pairwise accuracy of the last reward model.",
            registry=r,
        )  # fmt: skip
        self.ppo = Gauge(
            "flywheel_trainer_ppo",
            "Last policy update (PPO: score, kl, beta...; GRPO: grpo_reward...; DPO: dpo_loss...; KTO: kto_loss...).",
            ["stat"],
            registry=r,
        )
        self.eval = Gauge(
            "flywheel_trainer_eval", "Last evaluation on held-out prompts, by policy and stat.", ["policy", "stat"],
            registry=r,
        )  # fmt: skip
        self.published = Info("flywheel_trainer_published", "The newest version the trainer published.", registry=r)
        self.published_total = Counter("flywheel_trainer_versions_published", "Versions published.", registry=r)
        self.rollout_decisions = Counter(
            "flywheel_trainer_rollout_decisions", "Roll-out decisions seen on the policy topic, by action.",
            ["action"], registry=r,
        )  # fmt: skip
        self.rollout_probability = Gauge(
            "flywheel_trainer_rollout_canary_better_probability",
            "P(canary's thumbs-up rate > stable's) in the current roll-out window.", registry=r,
        )  # fmt: skip
        self.rollout_thumbs = Gauge(
            "flywheel_trainer_rollout_thumbs", "Thumbs in the current roll-out window, by side and direction.",
            ["side", "direction"], registry=r,
        )  # fmt: skip
        self.feedback_to_policy = Histogram(
            "flywheel_trainer_feedback_to_policy_seconds",
            "From the oldest feedback a version is the first to train on to that version's publication.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
