"""What the simulated users saw and said, and the satisfaction statistics drawn from it.

Pure: records go in, plain dicts (the report's JSON) come out. Satisfaction is what the hidden
preference says of each answer served, before noise; feedback counts are what the feedback
service accepted. Rates carry Wilson score intervals (Wilson 1927; Brown, Cai and DasGupta
2001 recommend it over the normal approximation for small counts).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

Z_95 = 1.959963984540054  # two-sided 95%


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, not 1 - 1e-16
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def newcombe_difference(a: tuple[int, int], b: tuple[int, int], z: float = Z_95) -> tuple[float, float, float]:
    """Difference of two proportions (a - b) and its interval from the two Wilson intervals.

    Newcombe (1998), method 10. Each argument is (successes, trials), both with trials > 0.
    """
    (ka, na), (kb, nb) = a, b
    if na == 0 or nb == 0:
        raise ValueError("both proportions need at least one trial")
    pa, pb = ka / na, kb / nb
    la, ua = wilson_interval(ka, na, z)
    lb, ub = wilson_interval(kb, nb, z)
    difference = pa - pb
    low = difference - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    high = difference + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return difference, low, high


@dataclass(frozen=True)
class Answer:
    """One answer served to a simulated user, judged by the hidden preference."""

    turn: int
    user: int
    version: str
    at_s: float  # seconds since the simulation started
    score: float
    satisfied: bool


@dataclass(frozen=True)
class Feedback:
    """One feedback submission: a thumbs or a comparison, accepted (202) or not."""

    turn: int
    user: int
    version: str
    at_s: float
    kind: str  # "thumbs", "comparison" or "correction"
    outcome: str  # thumbs: "up"/"down"; comparison: its strength ("tie", "better", ...)
    accepted: bool
    flipped: bool
    completion_id: str = ""


@dataclass
class Tally:
    """Everything recorded during a run; safe to append to from one event loop."""

    answers: list[Answer] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "serving: connection", "feedback: http 403", ...
    error_samples: dict[str, str] = field(default_factory=dict)  # the first message of each kind
    turns_started: int = 0
    turns_completed: int = 0  # answered, and the feedback accepted
    turns_failed: int = 0  # a service failed; started - completed - failed were cut short (Ctrl-C)

    def error(self, service: str, kind: str, message: str) -> None:
        key = f"{service}: {kind}"
        self.errors[key] += 1
        self.error_samples.setdefault(key, message[:500])

    def versions(self) -> list[str]:
        """Policy versions in the order they were first seen."""
        return list(dict.fromkeys(a.version for a in self.answers))


def cell(answers: list[Answer], feedback: list[Feedback], z: float = Z_95) -> dict:
    """Counts and the satisfaction rate (with its Wilson interval) of one group of records."""
    satisfied = sum(a.satisfied for a in answers)
    low, high = wilson_interval(satisfied, len(answers), z)
    accepted = [f for f in feedback if f.accepted]
    return {
        "answers": len(answers),
        "satisfied": satisfied,
        "rate": satisfied / len(answers) if answers else None,
        "ci_low": low,
        "ci_high": high,
        "mean_score": sum(a.score for a in answers) / len(answers) if answers else None,
        "thumbs_up": sum(f.kind == "thumbs" and f.outcome == "up" for f in accepted),
        "thumbs_down": sum(f.kind == "thumbs" and f.outcome == "down" for f in accepted),
        "comparisons": sum(f.kind == "comparison" for f in accepted),
        "ties": sum(f.kind == "comparison" and f.outcome == "tie" for f in accepted),
        "corrections": sum(f.kind == "correction" for f in accepted),
        "events_accepted": len(accepted),
        "events_failed": len(feedback) - len(accepted),
        "flipped_by_noise": sum(f.flipped for f in accepted),
    }


def summarize(tally: Tally, window_s: float, z: float = Z_95) -> dict:
    """Totals per version, per time window per version, per window over all versions."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    versions = tally.versions()
    versions += [v for v in dict.fromkeys(f.version for f in tally.feedback) if v not in versions]

    def window_of(at_s: float) -> int:
        return int(at_s // window_s)

    per_version = []
    for version in versions:
        answers = [a for a in tally.answers if a.version == version]
        feedback = [f for f in tally.feedback if f.version == version]
        times = [a.at_s for a in answers] + [f.at_s for f in feedback]
        per_version.append({"version": version, "first_seen_s": min(times), "last_seen_s": max(times),
                            **cell(answers, feedback, z)})  # fmt: skip
    windows, windows_all = [], []
    indices = sorted({window_of(a.at_s) for a in tally.answers} | {window_of(f.at_s) for f in tally.feedback})
    for index in indices:
        bounds = {"window": index, "start_s": index * window_s, "end_s": (index + 1) * window_s}
        answers = [a for a in tally.answers if window_of(a.at_s) == index]
        feedback = [f for f in tally.feedback if window_of(f.at_s) == index]
        windows_all.append({**bounds, **cell(answers, feedback, z)})
        for version in versions:
            va = [a for a in answers if a.version == version]
            vf = [f for f in feedback if f.version == version]
            if va or vf:
                windows.append({**bounds, "version": version, **cell(va, vf, z)})
    return {
        "versions": per_version,
        "versus_first": _versus_first(per_version, z),
        "windows": windows,
        "windows_all": windows_all,
        "overall": cell(tally.answers, tally.feedback, z),
    }


def _versus_first(per_version: list[dict], z: float) -> list[dict]:
    """Each later version's satisfaction rate minus the first version's, with a 95% interval."""
    measured = [v for v in per_version if v["answers"]]
    if len(measured) < 2:
        return []
    first = measured[0]
    rows = []
    for later in measured[1:]:
        difference, low, high = newcombe_difference(
            (later["satisfied"], later["answers"]), (first["satisfied"], first["answers"]), z
        )
        rows.append({"version": later["version"], "baseline": first["version"], "difference": difference,
                     "ci_low": low, "ci_high": high, "clear": low > 0 or high < 0})  # fmt: skip
    return rows
