"""One training round, top to bottom: collect → reward model → PPO → evaluate → publish.

Each phase may end the round with a reason (too little data, a failed gate); nothing is published
unless every gate passed. The model store's rename is the commit point: a round killed before it
leaves nothing visible, and the round's row says 'running' until a restart marks it failed.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.settings import TrainerSettings
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2
from trainer.dataset import DatasetStore
from trainer.evaluate import measure_policy, policy_gate, reward_gain, reward_model_gate, sample_answers
from trainer.metrics import TrainerMetrics
from trainer.pairs import HeldOut, Messages, PairSet, build_pairs
from trainer.ppo import encode_prompts, load_policy, run_ppo
from trainer.reward import load_reward_model, load_tokenizer, prompt_ids, train_reward_model

log = logging.getLogger(__name__)

REWARD_MODEL_KEY = "reward_model"


@dataclass
class RoundContext:
    """What a round works with; the service owns it, tests build it by hand."""

    settings: TrainerSettings
    base_model: str
    dataset: DatasetStore
    policies: ModelStore
    reward_models: ModelStore
    announce: Callable[[events_pb2.PolicyPublished], None]
    metrics: TrainerMetrics = field(default_factory=TrainerMetrics)


@dataclass
class RoundResult:
    round: int
    outcome: str  # published | gate_failed | skipped | reward_updated | failed
    reason: str = ""
    version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


class _Phases:
    """Times each phase into the metrics and the round's summary."""

    def __init__(self, metrics: TrainerMetrics, summary: dict[str, float]) -> None:
        self.metrics = metrics
        self.summary = summary

    @contextmanager
    def phase(self, name: str):
        log.info("round phase: %s", name)
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.metrics.phase_seconds.labels(name).observe(seconds)
            self.summary[f"seconds_{name}"] = seconds


def _step_logger(what: str) -> Callable[[int, int, dict], None]:
    def report(step: int, total: int, logs: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float))
        log.info("%s step %d/%d %s", what, step, total, shown)

    return report


def current_policy(ctx: RoundContext) -> tuple[str, Path | None]:
    """The version PPO continues from and its adapter; base when none.

    That is the canary, else the stable version, as the roll-out recorded them (a rolled-back
    version is never built on); the newest published version when no roll-out was recorded yet.
    """
    from trainer.rollout import trained_parent

    parent = trained_parent(ctx.policies)
    if parent is None:
        latest = ctx.policies.latest()
        parent = latest.version if latest is not None else ctx.settings.base_version
    if parent == ctx.settings.base_version or not (ctx.policies.path(parent) / "manifest.json").is_file():
        return ctx.settings.base_version, None
    manifest = ctx.policies.manifest(parent)
    if manifest.kind != "lora":  # merged full weights (flywheel merge): continue from the adapter merged
        log.info("%s has full weights; training continues from the adapter it was merged from, %s", parent,
                 manifest.parent or "none")  # fmt: skip
        parent = manifest.parent
        if not parent or not (ctx.policies.path(parent) / "manifest.json").is_file():
            return ctx.settings.base_version, None
        if ctx.policies.manifest(parent).kind != "lora":
            return ctx.settings.base_version, None
    return parent, ctx.policies.path(parent)


def available_pairs(ctx: RoundContext, parent_version: str) -> PairSet:
    """Every pair the stored feedback gives now, with the anchors already at hand."""
    store = ctx.dataset
    rated, ranked, external = store.rated_responses(), store.ranked_completions(), store.external_pairs()
    anchors = store.unrated_choices({r.prompt_key for r in rated})
    for key, text in store.samples(parent_version).items():
        anchors.setdefault(key, []).append(text)
    return build_pairs(rated, ranked, external, anchors, heldout_slice(store, ctx.settings))


def heldout_slice(store: DatasetStore, settings: TrainerSettings) -> HeldOut:
    reward = settings.reward
    return HeldOut.of(store.prompt_keys(), reward.heldout_percent, reward.min_heldout_prompts)


def collect_pairs(ctx: RoundContext, parent_version: str, parent_adapter: Path | None) -> PairSet:
    """Pairs from the store; lone thumbs without an anchor get a fresh sample of the parent policy."""
    pairs = available_pairs(ctx, parent_version)
    if pairs.need_samples:
        ctx.dataset.save_samples(parent_version, sample_policy(ctx, parent_adapter, pairs.need_samples))
        pairs = available_pairs(ctx, parent_version)
    return pairs


def sample_policy(ctx: RoundContext, adapter: Path | None, prompts: dict[str, Messages]) -> dict[str, str]:
    """One sampled answer of the policy per prompt (anchors for lone thumbs)."""
    tokenizer = load_tokenizer(ctx.base_model)
    policy = load_policy(ctx.base_model, adapter, ctx.settings.ppo.lora_rank, trainable=False)
    ppo = ctx.settings.ppo
    keys = [key for key in prompts if len(prompt_ids(tokenizer, prompts[key])) <= ppo.max_prompt_tokens]
    texts: dict[str, str] = {}
    for start in range(0, len(keys), 16):
        chunk = keys[start : start + 16]
        queries = [prompt_ids(tokenizer, prompts[key]) for key in chunk]
        samples = sample_answers(policy, tokenizer, queries, ppo.response_length, ppo.temperature, ctx.settings.seed)
        texts.update(zip(chunk, samples.answers, strict=True))
    log.info("sampled the policy for %d prompts with lone thumbs", len(texts))
    return texts


def _next_version(store: ModelStore) -> str:
    return f"v{len(store.versions()) + 1:04d}-{secrets.token_hex(2)}"


def run_round(ctx: RoundContext, reward_only: bool = False) -> RoundResult:
    settings, store, m = ctx.settings, ctx.dataset, ctx.metrics
    watermark = store.feedback_seq()
    round_id = store.begin_round(watermark)
    summary: dict[str, float] = {}
    phases = _Phases(m, summary)
    started = time.monotonic()
    m.round_running.set(1)
    log.info("round %d starts (feedback up to seq %d, reward_only=%s)", round_id, watermark, reward_only)

    def finish(outcome: str, reason: str = "", version: str = "") -> RoundResult:
        summary["seconds_round"] = time.monotonic() - started
        store.finish_round(round_id, outcome, reason, version, summary)
        m.rounds.labels(outcome).inc()
        m.round_seconds.observe(summary["seconds_round"])
        m.round_running.set(0)
        log.info("round %d: %s%s", round_id, outcome, f" ({reason})" if reason else "")
        return RoundResult(round_id, outcome, reason, version, dict(summary))

    try:
        parent_version, parent_adapter = current_policy(ctx)

        # collect: every pair the stored feedback gives (lone thumbs against the parent's samples)
        with phases.phase("collect"):
            pairs = collect_pairs(ctx, parent_version, parent_adapter)
        m.pairs.labels("train").set(len(pairs.train))
        m.pairs.labels("heldout").set(len(pairs.heldout))
        summary.update(pairs_train=len(pairs.train), pairs_heldout=len(pairs.heldout))
        if len(pairs.train) < settings.rounds.min_pairs:
            return finish("skipped", f"{len(pairs.train)} training pairs, fewer than {settings.rounds.min_pairs}")

        # reward model: Bradley-Terry on the newest pairs; it must beat the floor and its predecessor
        with phases.phase("reward_model"):
            training = train_reward_model(
                ctx.base_model, pairs.train[-settings.reward.max_pairs :], settings.reward,
                settings.work_dir / f"round-{round_id}" / "reward", settings.seed, _step_logger("reward model"),
            )  # fmt: skip
            accuracy = training.reward_model.accuracy(pairs.heldout)
            previous = _previous_reward_accuracy(ctx, pairs)
        summary.update(
            reward_loss=training.loss, reward_accuracy=accuracy, reward_examples_per_s=training.examples_per_s
        )
        if previous is not None:
            summary["reward_accuracy_previous"] = previous
        m.reward_loss.set(training.loss)
        m.reward_accuracy.set(accuracy if not math.isnan(accuracy) else 0.0)
        reason = reward_model_gate(accuracy, previous, settings.reward)
        m.gates.labels("reward_model", "fail" if reason else "pass").inc()
        if reason:
            return finish("gate_failed", reason)
        reward_version = f"rm-{round_id:04d}-{secrets.token_hex(2)}"
        ctx.reward_models.publish(
            reward_version, training.peft_model.save_pretrained, parent=store.get_state(REWARD_MODEL_KEY),
            base_model=ctx.base_model, kind="reward", metrics={"heldout_accuracy": accuracy},
        )  # fmt: skip
        store.set_state(REWARD_MODEL_KEY, reward_version)
        reward = training.reward_model
        if reward_only:
            return finish("reward_updated", version=reward_version)

        # ppo: prompts from real traffic (held-out prompts kept for the evaluation)
        prompts = _prompts(ctx)
        heldout = heldout_slice(store, settings)
        train_prompts = [msgs for key, msgs in prompts if key not in heldout]
        eval_prompts = [msgs for key, msgs in prompts if key in heldout]
        eval_prompts = eval_prompts[: settings.gates.eval_prompts]
        if not train_prompts or not eval_prompts:
            return finish("skipped", f"{len(train_prompts)} training and {len(eval_prompts)} held-out prompts")
        with phases.phase("ppo"):
            ppo = run_ppo(
                ctx.base_model, parent_adapter, reward, train_prompts, settings.ppo,
                settings.work_dir / f"round-{round_id}" / "ppo", settings.seed, _step_logger("ppo"),
            )  # fmt: skip
        summary.update(ppo.metrics, ppo_samples_per_s=ppo.samples_per_s)
        for stat in ("score_last", "kl", "beta", "entropy", "logprob_gap"):
            m.ppo.labels(stat).set(ppo.metrics[f"ppo_{stat}"])

        # evaluate: the new policy against its parent and the reference on held-out prompts
        with phases.phase("evaluate"):
            tokenizer = load_tokenizer(ctx.base_model)
            queries = encode_prompts(tokenizer, eval_prompts, 10**9)
            # The same prompts, batches and seeds for every policy: their rewards compare prompt by prompt.
            # Few held-out prompts (early on, or a narrow prompt pool) get more samples each, so every
            # per-prompt gain is measured about as well as `eval_prompts` answers would measure one.
            samples = max(settings.gates.eval_samples, min(16, math.ceil(settings.gates.eval_prompts / len(queries))))
            args = (tokenizer, reward, eval_prompts, queries, settings.ppo.response_length, settings.ppo.temperature,
                    samples, settings.seed)  # fmt: skip
            new = measure_policy(ppo.policy, *args)
            reference = measure_policy(load_policy(ctx.base_model, None, settings.ppo.lora_rank, False), *args)
            parent = reference if parent_adapter is None else measure_policy(
                load_policy(ctx.base_model, parent_adapter, settings.ppo.lora_rank, False), *args
            )  # fmt: skip
        for name, measure in (("new", new), ("parent", parent), ("reference", reference)):
            for stat in ("mean_reward", "mean_kl", "mean_length", "ended"):
                summary[f"eval_{name}_{stat}"] = getattr(measure, stat)
                m.eval.labels(name, stat).set(getattr(measure, stat))
        gain, stderr = reward_gain(new, parent)
        summary.update(eval_prompts=len(eval_prompts), eval_samples=samples, eval_reward_gain=gain,
                       eval_reward_gain_stderr=stderr)  # fmt: skip
        m.eval.labels("new", "reward_gain").set(gain)
        m.eval.labels("new", "reward_gain_stderr").set(stderr)
        reasons = policy_gate(new, parent, reference, settings.gates)
        m.gates.labels("policy", "fail" if reasons else "pass").inc()
        if reasons:
            return finish("gate_failed", "; ".join(reasons))

        # publish: adapter + manifest into the store (one rename), then announce it on Kafka
        with phases.phase("publish"):
            version = _next_version(ctx.policies)
            oldest = store.oldest_feedback_time(store.last_round_seq(("published",)), watermark)
            manifest = ctx.policies.publish(
                version, ppo.policy.save_pretrained, parent=parent_version, base_model=ctx.base_model,
                kind="lora", metrics=summary, extra={"round": round_id, "reward_model": reward_version},
            )  # fmt: skip
            if oldest is not None:
                latency = manifest.created_at - oldest
                summary["feedback_to_policy_seconds"] = latency
                m.feedback_to_policy.observe(latency)
            ctx.announce(policy_published_event(manifest, ctx.policies.root))
        m.published.info({"version": version, "parent": parent_version})
        m.published_total.inc()
        return finish("published", version=version)
    except Exception as exc:  # a round that breaks must not take the trainer down with it
        log.exception("round %d failed", round_id)
        return finish("failed", f"{type(exc).__name__}: {exc}")


def _previous_reward_accuracy(ctx: RoundContext, pairs: PairSet) -> float | None:
    name = ctx.dataset.get_state(REWARD_MODEL_KEY)
    if not name or not pairs.heldout:
        return None
    try:
        ctx.reward_models.verify(name)
    except Exception as exc:
        log.warning("previous reward model %s unusable: %s", name, exc)
        return None
    previous = load_reward_model(ctx.base_model, ctx.reward_models.path(name), ctx.settings.reward.max_length)
    return previous.accuracy(pairs.heldout)


def _prompts(ctx: RoundContext):
    """Traffic prompts, newest first; imported pairs' prompts only when traffic has none."""
    prompts = ctx.dataset.prompts(ctx.settings.ppo.max_prompts)
    if not prompts:
        seen: dict[str, object] = {}
        for row in reversed(ctx.dataset.external_pairs()):
            seen.setdefault(row.prompt_key, row.messages)
        prompts = list(seen.items())[: ctx.settings.ppo.max_prompts]
    return prompts


def policy_published_event(manifest, root: Path) -> events_pb2.PolicyPublished:
    from flywheel.events import SCHEMA_VERSION, new_event_id, timestamp_now

    event = events_pb2.PolicyPublished(
        event_id=new_event_id(),
        created_at=timestamp_now(),
        schema_version=SCHEMA_VERSION,
        version=manifest.version,
        parent_version=manifest.parent,
        base_model=manifest.base_model,
        kind=manifest.kind,
        path=manifest.version,
    )
    for entry in manifest.files:
        event.files.add(path=entry.path, sha256=entry.sha256, size=entry.size)
    for key, value in manifest.metrics.items():
        if isinstance(value, int | float) and not math.isnan(value):
            event.metrics[key] = float(value)
    return event
