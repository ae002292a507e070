"""How a simulated user turns preference scores into feedback, with noise.

Pure functions of the scores and a random source: with probability `noise` a user states the
opposite of what their preference says (thumbs up for an answer they dislike, or the worse of
two answers). A tie (equal scores) is reported as a tie; noise does not turn it into a preference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flywheel.simulate.preferences import SATISFIED_AT


@dataclass(frozen=True)
class Thumbs:
    rating: str  # "up" or "down", as sent
    satisfied: bool  # what the preference says, before noise
    flipped: bool


@dataclass(frozen=True)
class Verdict:
    preferred: int
    rejected: int
    strength: str  # the feedback API's strength: much_better, better, slightly_better or tie
    flipped: bool

    @property
    def tie(self) -> bool:
        return self.strength == "tie"


def judge_thumbs(score: float, rng: random.Random, noise: float) -> Thumbs:
    satisfied = score >= SATISFIED_AT
    flipped = rng.random() < noise  # drawn every time, so a seed gives the same stream whatever the scores
    return Thumbs("up" if satisfied != flipped else "down", satisfied, flipped)


def strength_of(difference: float) -> str:
    if difference >= 0.5:
        return "much_better"
    if difference >= 0.2:
        return "better"
    return "slightly_better"


def judge_comparison(scores: tuple[float, float], rng: random.Random, noise: float) -> Verdict:
    """Which of two choices (indices 0 and 1) the user says is better."""
    flipped = rng.random() < noise
    first, second = scores
    if first == second:
        return Verdict(0, 1, "tie", False)
    better, worse = (0, 1) if first > second else (1, 0)
    if flipped:
        better, worse = worse, better
    return Verdict(better, worse, strength_of(abs(first - second)), flipped)
