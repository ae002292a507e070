"""The round's reward model: trained fresh or continued on the new pairs, gated, published or refused."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

from flywheel.channel import REWARD_KIND
from flywheel.settings import RewardSection
from flywheel.store import Manifest
from trainer.context import REWARD_MODEL_KEY, RoundContext, step_logger
from trainer.evaluate import reward_model_gate
from trainer.pairs import PairSet, answer_groups, continuation_pairs, effective_count
from trainer.reward import RewardModel, load_reward_model, train_reward_model

log = logging.getLogger(__name__)


@dataclass
class RewardUpdate:
    model: RewardModel | None  # what PPO scores with: the new model, else its predecessor, else none
    version: str
    refused: str = ""  # why the new model was refused ('' when it passed or none was trained)
    trained: bool = False
    accuracy: float = float("nan")
    summary: dict[str, float] = field(default_factory=dict)


def fresh_epochs(config: RewardSection, pairs: int) -> float:
    """Epochs of a fresh reward model: `epochs`, or more when that would be under `min_steps` steps."""
    return max(config.epochs, config.min_steps * config.batch_size / max(pairs, 1))


def update_reward_model(ctx: RoundContext, pairs: PairSet, round_id: int, fresh: bool = False) -> RewardUpdate:
    """Train the round's reward model and gate it; the predecessor stays in use when it is refused.

    The current model continues on the pairs new since it was trained, with as many older ones
    replayed (`reward.continue_training`), so a round's cost follows the new feedback, not all of it;
    the first model, one after `continue_training` was turned off, or one asked `fresh` (raters were
    left out: what they taught its predecessor must go), is trained fresh on every pair.
    """
    settings, config = ctx.settings, ctx.settings.reward
    previous = current_reward_model(ctx)
    since = int(previous[1].extra.get("trained_through_seq", -1)) if previous else -1
    continuing = previous is not None and config.continue_training and since >= 0 and not fresh
    if continuing:
        chosen = continuation_pairs(pairs.train, since, config.replay_ratio, config.max_pairs, settings.seed + round_id)
        if not chosen:
            log.info("no pair is new since reward model %s; it stays in use", previous[0])
            return RewardUpdate(previous[2], previous[0])
    else:
        chosen = pairs.train[-config.max_pairs :]
    training = train_reward_model(
        ctx.base_model, chosen, config, settings.work_dir / f"round-{round_id}" / "reward", settings.seed,
        step_logger("reward model"), start_from=ctx.reward_models.path(previous[0]) if continuing else None,
        epochs=config.continue_epochs if continuing else fresh_epochs(config, len(chosen)),
    )  # fmt: skip
    correct = training.reward_model.correct(pairs.heldout)
    accuracy = sum(correct) / len(correct) if correct else float("nan")
    summary = {"reward_loss": training.loss, "reward_accuracy": accuracy,
               "reward_examples_per_s": training.examples_per_s, "reward_pairs": len(chosen),
               "reward_continued": float(continuing)}  # fmt: skip
    previous_correct = previous[2].correct(pairs.heldout) if previous and pairs.heldout else None
    if previous_correct:
        summary["reward_accuracy_previous"] = sum(previous_correct) / len(previous_correct)
    groups = answer_groups(pairs.heldout)
    summary["reward_heldout_pairs"] = len(correct)
    summary["reward_heldout_independent"] = effective_count(groups)
    refused = reward_model_gate(correct, previous_correct, config, groups)
    if refused:
        if previous is None:
            return RewardUpdate(None, "", refused, True, accuracy, summary)
        log.info("reward model refused (%s); %s stays in use", refused, previous[0])
        summary["reward_model_kept"] = 1.0
        return RewardUpdate(previous[2], previous[0], refused, True, accuracy, summary)
    version = f"rm-{round_id:04d}-{secrets.token_hex(2)}"
    ctx.reward_models.publish(
        version, training.peft_model.save_pretrained, parent=previous[0] if previous else "",
        base_model=ctx.base_model, kind=REWARD_KIND, metrics={"heldout_accuracy": accuracy},
        extra={"trained_through_seq": max(p.seq for p in pairs.train), "continued": continuing},
    )  # fmt: skip
    ctx.dataset.set_state(REWARD_MODEL_KEY, version)
    return RewardUpdate(training.reward_model, version, "", True, accuracy, summary)


def current_reward_model(ctx: RoundContext) -> tuple[str, Manifest, RewardModel] | None:
    """The reward model in use (name, manifest, loaded), when there is one and it is intact."""
    name = ctx.dataset.get_state(REWARD_MODEL_KEY)
    if not name:
        return None
    try:
        manifest = ctx.reward_models.verify(name)
    except Exception as exc:
        log.warning("previous reward model %s unusable: %s", name, exc)
        return None
    model = load_reward_model(ctx.base_model, ctx.reward_models.path(name), ctx.settings.reward.max_length)
    return name, manifest, model
