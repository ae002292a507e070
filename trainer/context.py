"""What a round works with (RoundContext) and what it comes to (RoundResult), shared by its phases."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from flywheel.settings import TrainerSettings
from flywheel.store import Manifest, ModelStore
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)

REWARD_MODEL_KEY = "reward_model"  # dataset state: the reward model in use
CANDIDATE_KEY = "policy_candidate"  # dataset state: a refused round's policy the next round continues

# How a round ended: a version published; refused by a gate; skipped (too little, nothing new); only
# the reward model trained (`reward_only`); failed (an error, or the trainer stopped during it).
Outcome = Literal["published", "gate_failed", "skipped", "reward_updated", "failed"]


@dataclass
class RoundContext:
    """What a round works with; the service owns it, tests build it by hand."""

    settings: TrainerSettings
    base_model: str
    dataset: DatasetStore
    policies: ModelStore
    reward_models: ModelStore
    announce: Callable[[Manifest], None]  # sends the version's PolicyPublished (flywheel.channel)
    # The version the roll-out says to train from (RolloutController.parent); it returns None before
    # any roll-out event, and the round then takes the newest published version.
    parent: Callable[[], str | None]
    metrics: TrainerMetrics = field(default_factory=TrainerMetrics)
    # Stores what the topics hold now, where no ingest thread does (flywheel train --once); None beside one.
    catch_up: Callable[[], None] | None = None


@dataclass
class RoundResult:
    round: int
    outcome: Outcome
    reason: str = ""
    version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def step_logger(what: str) -> Callable[[int, int, dict], None]:
    def report(step: int, total: int, logs: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float))
        log.info("%s step %d/%d %s", what, step, total, shown)

    return report
