"""Rater reliability: how often each user's judgements agree with the reward model in use.

The reward model is what everyone's feedback taught, so it stands for the other users. Each
round that has one scores every user's most recent judgements (a comparison's first two places;
a thumbs-up answer against one of the same user's thumbs-down answers) and counts how often the
model ranks them as the user did. A user whose agreement is below `min_agreement` (chance, 0.5)
even at the top of its Wilson interval (`z` standard errors) answers against the rest: in `drop`
mode their ratings, comparisons and corrections are left out of every pair, KTO example and
demonstration from then on (the dataset store's reads skip them), and the round trains its
reward model afresh without them. Every assessment is kept (table `raters`) for /status, the
operator page and the metrics; a user who comes back into line is counted again next round.

A user who answers at random agrees about half the time and stays in: their feedback is noise,
not a pull in the wrong direction, and with few judgements nobody is told apart from chance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from flywheel.training_settings import RatersSection
from trainer.dataset import DatasetStore
from trainer.reward import RewardModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rater:
    user: str
    judgements: int
    agreement: float
    excluded: bool


@dataclass
class RaterReport:
    raters: list[Rater] = field(default_factory=list)
    newly_excluded: list[str] = field(default_factory=list)
    changed: bool = False  # who is left out changed: the pairs must be read again

    @property
    def excluded(self) -> list[str]:
        return [r.user for r in self.raters if r.excluded]

    def summary(self) -> dict[str, float]:
        return {"raters_assessed": float(len(self.raters)), "raters_excluded": float(len(self.excluded))}


def wilson_upper(agree: int, n: int, z: float) -> float:
    """The top of the Wilson score interval of a proportion agree/n."""
    if n == 0:
        return 1.0
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def assess(store: DatasetStore, reward: RewardModel, config: RatersSection) -> RaterReport:
    """Score every user's judgements with `reward`; record who agrees and who is left out."""
    before = {user for user, _, _, excluded in store.raters() if excluded}
    judgements = store.rater_judgements(config.max_judgements)
    answers = sorted({(m, text) for items in judgements.values() for j in items
                      for m, text in ((j.better_messages, j.better), (j.worse_messages, j.worse))})  # fmt: skip
    scores = dict(zip(answers, reward.score([m for m, _ in answers], [t for _, t in answers]), strict=True))
    report = RaterReport()
    for user, items in sorted(judgements.items()):
        agree = sum(scores[(j.better_messages, j.better)] > scores[(j.worse_messages, j.worse)] for j in items)
        excluded = (config.mode == "drop" and len(items) >= config.min_judgements
                    and wilson_upper(agree, len(items), config.z) < config.min_agreement)  # fmt: skip
        report.raters.append(Rater(user, len(items), agree / len(items), excluded))
    store.save_raters([(r.user, r.judgements, r.agreement, r.excluded) for r in report.raters])
    report.newly_excluded = sorted(set(report.excluded) - before)
    report.changed = set(report.excluded) != before
    if report.excluded:
        log.info("%d of %d raters disagree with the rest beyond chance and are left out: %s", len(report.excluded),
                 len(report.raters), ", ".join(report.excluded[:10]))  # fmt: skip
    return report


def include_everyone(store: DatasetStore) -> bool:
    """Raters mode off: nobody is left out any more. True when someone was."""
    rows = store.raters()
    if not any(excluded for *_, excluded in rows):
        return False
    store.save_raters([(user, n, agreement, False) for user, n, agreement, _ in rows])
    return True
