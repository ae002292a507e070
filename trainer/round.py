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
from contextlib import contextmanager
from pathlib import Path

from kafka.errors import KafkaError

from flywheel.channel import ADAPTER_KIND
from flywheel.settings import TrainerSettings
from flywheel.store import Manifest, ModelStore
from trainer.candidates import candidates, current_candidate, keep_candidate
from trainer.context import RoundContext, RoundResult, step_logger
from trainer.dataset import DatasetStore
from trainer.dpo import run_dpo
from trainer.evaluate import (
    guard_gate,
    measure_policy,
    policy_gate,
    reward_gain,
    sample_answers,
)  # fmt: skip
from trainer.grpo import run_grpo
from trainer.judge import judge_round
from trainer.kto import kto_examples, run_kto
from trainer.metrics import TrainerMetrics
from trainer.pairs import HeldOut, Messages, PairSet, build_pairs, continuation_pairs, is_rewrite
from trainer.ppo import PolicyLora, PolicyTraining, encode_prompts, load_policy, run_ppo
from trainer.raters import assess, include_everyone
from trainer.records import AI_SOURCE, CorrectedResponse
from trainer.reward import RewardModel, load_tokenizer, prompt_ids
from trainer.reward_update import current_reward_model, update_reward_model
from trainer.sft import run_sft

log = logging.getLogger(__name__)


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


def current_policy(ctx: RoundContext) -> tuple[str, Path | None]:
    """The version PPO continues from and its adapter; base when none.

    That is the canary, else the stable version, as the roll-out recorded them (a rolled-back
    version is never built on); the newest published version when no roll-out was recorded yet.
    """
    parent = ctx.parent()
    if parent is None:
        latest = ctx.policies.latest()
        parent = latest.version if latest is not None else ctx.settings.base_version
    if parent == ctx.settings.base_version or not (ctx.policies.path(parent) / "manifest.json").is_file():
        return ctx.settings.base_version, None
    manifest = ctx.policies.manifest(parent)
    if manifest.kind != ADAPTER_KIND:  # merged full weights (flywheel merge): continue from the adapter merged
        log.info("%s has full weights; training continues from the adapter it was merged from, %s", parent,
                 manifest.parent or "none")  # fmt: skip
        parent = manifest.parent
        if not parent or not (ctx.policies.path(parent) / "manifest.json").is_file():
            return ctx.settings.base_version, None
        if ctx.policies.manifest(parent).kind != ADAPTER_KIND:
            return ctx.settings.base_version, None
    return parent, ctx.policies.path(parent)


def available_pairs(ctx: RoundContext, parent_version: str) -> PairSet:
    """Every pair the stored feedback gives now, with the anchors already at hand."""
    store = ctx.dataset
    rated, ranked, external = store.rated_responses(), store.ranked_completions(), store.external_pairs()
    anchors = store.unrated_choices({r.prompt_key for r in rated})
    for key, text in store.samples(parent_version).items():
        anchors.setdefault(key, []).append(text)
    return build_pairs(rated, ranked, external, anchors, heldout_slice(store, ctx.settings), store.corrections(),
                       ctx.settings.judge.weight)  # fmt: skip


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
    policy = load_policy(ctx.base_model, adapter, PolicyLora.of(ctx.settings.ppo), trainable=False)
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

        # judge (when an AI judge is set): its verdicts on served answers come back through Kafka as pairs
        if settings.judge.url and settings.judge.pairs_per_round:
            with phases.phase("judge"):
                judged = judge_round(store, settings.judge, settings.admin_key.get_secret_value(),
                                     heldout_slice(store, settings), catch_up=ctx.catch_up)  # fmt: skip
            summary.update(judged.summary())
            for outcome, count in (("pair", judged.pairs), ("tie", judged.ties), ("unparsed", judged.unparsed)):
                m.judge_verdicts.labels(outcome).inc(count)

        # raters: whoever disagrees with the reward model in use beyond chance is left out of the pairs
        fresh_reward = False
        if settings.raters.mode == "off":
            include_everyone(store)
        elif (current := current_reward_model(ctx)) is not None:
            with phases.phase("raters"):
                raters = assess(store, current[2], settings.raters)
            summary.update(raters.summary())
            m.raters.labels("kept").set(len(raters.raters) - len(raters.excluded))
            m.raters.labels("excluded").set(len(raters.excluded))
            fresh_reward = bool(raters.newly_excluded)

        # collect: every pair the stored feedback gives (lone thumbs against the parent's samples)
        with phases.phase("collect"):
            pairs = collect_pairs(ctx, parent_version, parent_adapter)
        m.pairs.labels("train").set(len(pairs.train))
        m.pairs.labels("heldout").set(len(pairs.heldout))
        ai_pairs = sum(pair.source == AI_SOURCE for pair in pairs.train)
        m.train_pairs.labels("human").set(len(pairs.train) - ai_pairs)
        m.train_pairs.labels("ai").set(ai_pairs)
        summary.update(pairs_train=len(pairs.train), pairs_heldout=len(pairs.heldout), pairs_ai=ai_pairs)
        if len(pairs.train) < settings.rounds.min_pairs:
            return finish("skipped", f"{len(pairs.train)} training pairs, fewer than {settings.rounds.min_pairs}")

        # reward model: Bradley-Terry; the current one continues on the new pairs (and replayed older ones).
        # A new model must beat the floor and its predecessor; a refused one leaves the predecessor in use.
        with phases.phase("reward_model"):
            update = update_reward_model(ctx, pairs, round_id, fresh=fresh_reward)
        summary.update(update.summary)
        if update.trained:
            m.reward_loss.set(update.summary["reward_loss"])
            m.reward_accuracy.set(update.summary["reward_accuracy"] if not math.isnan(update.accuracy) else 0.0)
            m.gates.labels("reward_model", "fail" if update.refused else "pass").inc()
        if update.model is None:
            return finish("gate_failed", update.refused)
        reward, reward_version = update.model, update.version
        if reward_only:
            return finish("reward_updated" if not update.refused else "gate_failed", update.refused, reward_version)

        # ppo: prompts from real traffic (held-out prompts kept for the evaluation)
        prompts = _prompts(ctx)
        heldout = heldout_slice(store, settings)
        train_prompts = [msgs for key, msgs in prompts if key not in heldout]
        eval_prompts = [msgs for key, msgs in prompts if key in heldout]
        eval_prompts = eval_prompts[: settings.gates.eval_prompts]
        if not train_prompts or not eval_prompts:
            return finish("skipped", f"{len(train_prompts)} training and {len(eval_prompts)} held-out prompts")
        candidate = current_candidate(ctx, parent_version)  # an earlier round's policy, ahead but not clearly
        start = candidates(ctx).path(candidate.version) if candidate else parent_adapter
        summary["candidate_rounds"] = 1 + (candidate.extra.get("rounds", 0) if candidate else 0)
        start_manifest = candidate or (ctx.policies.manifest(parent_version) if parent_adapter else None)
        sft_through = int(start_manifest.extra.get("sft_through_seq", -1)) if start and start_manifest else -1
        demonstrations = new_demonstrations(ctx, sft_through)
        if len(demonstrations) >= settings.sft.min_demonstrations:  # users' rewrites first, then the RL phase
            with phases.phase("sft"):
                start, supervised = supervised_start(ctx, start, demonstrations, round_id)
            summary.update(supervised.metrics)
            sft_through = max(d.seq for d in demonstrations)
        with phases.phase(settings.algorithm):
            ppo = train_policy(ctx, start, start_manifest, reward, train_prompts, pairs.train, round_id)
        ppo.extra["sft_through_seq"] = sft_through
        summary.update(ppo.metrics, **{f"{settings.algorithm}_samples_per_s": ppo.samples_per_s})
        for name, value in ppo.metrics.items():
            m.ppo.labels(name.removeprefix("ppo_")).set(value)

        # evaluate: the new policy against its parent and the reference on held-out prompts
        with phases.phase("evaluate"):
            tokenizer = load_tokenizer(ctx.base_model)
            queries = encode_prompts(tokenizer, eval_prompts, 10**9)
            # The same prompts, batches and seeds for every policy: their rewards compare prompt by prompt.
            # Few held-out prompts (early on, or a narrow prompt pool) get more samples each, so every
            # per-prompt gain is measured about as well as `eval_prompts` answers would measure one.
            samples = max(settings.gates.eval_samples, min(16, math.ceil(settings.gates.eval_prompts / len(queries))))
            ppo_config = settings.ppo
            args = (tokenizer, reward, queries, ppo_config.response_length, ppo_config.temperature,
                    samples, settings.seed, ppo_config.missing_eos_penalty)  # fmt: skip
            new = measure_policy(ppo.policy, *args)
            reference = measure_policy(load_policy(ctx.base_model, None, PolicyLora.of(settings.ppo), False), *args)
            parent = reference if parent_adapter is None else measure_policy(
                load_policy(ctx.base_model, parent_adapter, PolicyLora.of(settings.ppo), False), *args
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
            # Within the guards and ahead of its parent but not yet clearly: the next round goes on from it.
            keep = gain > 0 and not guard_gate(new, reference, settings.gates)
            keep_candidate(ctx, ppo.policy if keep else None, parent_version, round_id, summary, ppo.extra)
            return finish("gate_failed", "; ".join(reasons))

        # publish: adapter + manifest into the store (one rename), then announce it on Kafka
        with phases.phase("publish"):
            version = _next_version(ctx.policies)
            oldest = store.oldest_feedback_time(store.last_round_seq(("published",)), watermark)
            manifest = ctx.policies.publish(
                version, ppo.policy.save_pretrained, parent=parent_version, base_model=ctx.base_model,
                kind=ADAPTER_KIND, metrics=summary,
                extra={"round": round_id, "reward_model": reward_version, **ppo.extra},
            )  # fmt: skip
            if oldest is not None:
                latency = manifest.created_at - oldest
                summary["feedback_to_policy_seconds"] = latency
                m.feedback_to_policy.observe(latency)
            try:
                ctx.announce(manifest)
            except KafkaError as exc:  # published all the same: the trainer's loop announces it once Kafka is back
                log.warning("published %s; its announcement waits for the broker: %s", version, exc)
            keep_candidate(ctx, None, parent_version, round_id, summary)
        m.published.info({"version": version, "parent": parent_version})
        m.published_total.inc()
        return finish("published", version=version)
    except NoNewPairs as exc:
        return finish("skipped", str(exc))
    except Exception as exc:  # a round that breaks must not take the trainer down with it
        log.exception("round %d failed", round_id)
        return finish("failed", f"{type(exc).__name__}: {exc}")


def train_policy(
    ctx: RoundContext, start: Path | None, start_manifest: Manifest | None, reward: RewardModel,
    prompts: list, train_pairs: list, round_id: int,
) -> PolicyTraining:  # fmt: skip
    """The round's policy update (`algorithm`): PPO or GRPO on the reward model, DPO on pairs, KTO on rated answers.

    DPO or KTO continuing a policy the same algorithm trained goes on with the pairs (answers) new
    since it, older ones replayed, as the reward model does; from a fresh adapter or another
    algorithm's policy, on all of them. The manifest records the algorithm.
    """
    settings = ctx.settings
    algorithm = settings.algorithm
    work = settings.work_dir / f"round-{round_id}" / algorithm
    if algorithm in ("ppo", "grpo"):
        if algorithm == "ppo":
            trained = run_ppo(ctx.base_model, start, reward, prompts, settings.ppo, work, settings.seed,
                              step_logger("ppo"))  # fmt: skip
        else:
            trained = run_grpo(ctx.base_model, start, reward, prompts, settings.grpo, PolicyLora.of(settings.ppo),
                               work, settings.seed + round_id, step_logger("grpo"))  # fmt: skip
        trained.extra["algorithm"] = algorithm
        return trained
    since = trained_through(start_manifest, algorithm) if start else -1
    rng_seed, lora, report = settings.seed + round_id, PolicyLora.of(settings.ppo), step_logger(algorithm)
    if algorithm == "dpo":
        rows = train_pairs
        config, limit = settings.dpo, settings.dpo.max_pairs
        run = run_dpo
    else:
        rows = kto_examples(ctx.dataset.rated_responses(), train_pairs, heldout_slice(ctx.dataset, settings))
        config, limit = settings.kto, settings.kto.max_examples
        run = run_kto
    chosen = continuation_pairs(rows, since, config.replay_ratio, limit, rng_seed)
    if not chosen:
        raise NoNewPairs(f"no feedback is new since the policy this round starts from (seq {since})")
    trained = run(ctx.base_model, start, chosen, config, lora, work, settings.seed, report)
    trained.extra.update(algorithm=algorithm, trained_through_seq=max(r.seq for r in rows))
    return trained


def new_demonstrations(ctx: RoundContext, since_seq: int) -> list[CorrectedResponse]:
    """Rewrites on training prompts newer than `since_seq` (the newest `sft.max_demonstrations`)."""
    heldout = heldout_slice(ctx.dataset, ctx.settings)
    rows = [r for r in ctx.dataset.corrections() if r.seq > since_seq and r.prompt_key not in heldout and is_rewrite(r)]
    return rows[-ctx.settings.sft.max_demonstrations :]


def supervised_start(
    ctx: RoundContext, start: Path | None, demonstrations: list[CorrectedResponse], round_id: int
) -> tuple[Path, PolicyTraining]:
    """The start policy fine-tuned on the demonstrations, saved as the adapter the RL phase starts from."""
    settings = ctx.settings
    work = settings.work_dir / f"round-{round_id}" / "sft"
    trained = run_sft(ctx.base_model, start, demonstrations, settings.sft, PolicyLora.of(settings.ppo), work,
                      settings.seed, step_logger("sft"))  # fmt: skip
    adapter = work / "adapter"
    trained.policy.save_pretrained(adapter)
    return adapter, trained


def trained_through(manifest: Manifest | None, algorithm: str) -> int:
    """The last feedback seq `algorithm` trained the policy of `manifest` on; -1 when another algorithm made it.

    Manifests from before the algorithm was recorded, with a trained_through_seq, were DPO's.
    """
    extra = manifest.extra if manifest else {}
    if extra.get("algorithm", "dpo") != algorithm:
        return -1
    return int(extra.get("trained_through_seq", -1))


class NoNewPairs(Exception):
    """A DPO or KTO round has nothing new to learn from: it is skipped, not failed."""


def _prompts(ctx: RoundContext):
    """Traffic prompts, newest first; imported pairs' prompts only when traffic has none."""
    prompts = ctx.dataset.prompts(ctx.settings.ppo.max_prompts)
    if not prompts:
        seen: dict[str, object] = {}
        for row in reversed(ctx.dataset.external_pairs()):
            seen.setdefault(row.prompt_key, row.messages)
        prompts = list(seen.items())[: ctx.settings.ppo.max_prompts]
    return prompts
