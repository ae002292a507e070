"""Preference pairs from stored feedback: pure functions, no database, no model.

- a comparison or ranking of k choices gives its k(k-1)/2 ordered pairs (a tie gives none);
- thumbs up vs thumbs down on the same prompt give pairs (every up answer beats every down one);
- a lone thumb (a prompt whose rated answers all point one way) is paired with the policy's own
  sample for that prompt: an up answer beats it, a down answer loses to it. This keeps a single
  Bradley-Terry objective (TRL's RewardTrainer) and anchors a thumb to what the policy does now.
  A sample is a typical answer: with a share m of thumbs up, it would be liked with probability
  about m, so a pair of it against a thumbs-down answer is right about 0.5 + m/2 of the time (a
  tie of verdicts is a coin toss), and one against a thumbs-up answer 0.5 + (1 - m)/2. The
  majority verdict's lone thumbs are paired only while the minority's share is at least a third,
  so no such pair is right less than two times in three. (A live run's first round had 15 ups
  to 91 downs: 66 of its 71 sample pairs were a thumbs down, right about 57 % of the time, and
  they were 12 of its 30 held-out pairs);
- a correction (a user's rewrite of an answer) beats the answer it rewrote;
- imported pairs are used as they are; an AI judge's verdicts (source "ai", trainer/judge.py)
  train only, never held out, each counted `ai_weight` times (a fraction: that share of them,
  the same ones every round).
The held-out slice is chosen by a hash of the prompt: fixed for a prompt, growing with the data,
and no prompt is on both sides.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Protocol, TypeVar

from trainer.records import AI_SOURCE, CorrectedResponse, ExternalPairRow, RankedCompletion, RatedResponse

TIE = 4  # ComparisonStrength.COMPARISON_STRENGTH_TIE
MAX_PAIRS_PER_PROMPT = 16
MIN_MINORITY_SHARE = 1 / 3  # below it, the majority's lone thumbs are not paired with a sample

Messages = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Pair:
    prompt_key: str
    messages: Messages
    chosen: str
    rejected: str
    source: str
    seq: int


@dataclass
class PairSet:
    train: list[Pair] = field(default_factory=list)
    heldout: list[Pair] = field(default_factory=list)
    # Prompts with lone thumbs and no policy sample yet: the round samples the policy for them.
    need_samples: dict[str, Messages] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.train) + len(self.heldout)


def _hash_value(prompt_key: str) -> int:
    return int(hashlib.sha256(prompt_key.encode("utf-8")).hexdigest()[:8], 16)


def is_heldout(prompt_key: str, percent: int) -> bool:
    return _hash_value(prompt_key) % 100 < percent


@dataclass(frozen=True)
class HeldOut:
    """The held-out prompts: those whose hash bucket falls under `percent`, plus `extra`.

    A narrow prompt pool (the simulator has 64 prompts) leaves the percentage with a handful, or
    two: too few to tell a better policy from noise. `of` tops the slice up to a minimum with the
    next prompts in hash order, at most a quarter of them. Once 4 x minimum prompts are known, a
    prompt only leaves the slice when a new one takes its place (it then trains), and one that
    trained never becomes held out; before that the slice grows with the prompts and may take one.
    """

    percent: int
    extra: frozenset[str] = frozenset()

    @classmethod
    def of(cls, prompt_keys: Iterable[str], percent: int, minimum: int = 0) -> HeldOut:
        ranked = sorted(set(prompt_keys), key=lambda key: (_hash_value(key) % 100, _hash_value(key), key))
        return cls(percent, frozenset(ranked[: min(minimum, len(ranked) // 4)]))

    def __contains__(self, prompt_key: str) -> bool:
        return is_heldout(prompt_key, self.percent) or prompt_key in self.extra


def ranking_pairs(ranking: Sequence[int], strength: int) -> list[tuple[int, int]]:
    """(better, worse) choice indices of a best-first ranking; a tie states no preference."""
    if strength == TIE:
        return []
    return list(combinations(ranking, 2))


def comparison_pairs(ranked: Iterable[RankedCompletion]) -> list[Pair]:
    pairs = []
    for item in ranked:
        for better, worse in ranking_pairs(item.ranking, item.strength):
            if max(better, worse) < len(item.texts) and item.texts[better] != item.texts[worse]:
                pairs.append(Pair(item.prompt_key, item.messages, item.texts[better], item.texts[worse],
                                  "comparison", item.seq))  # fmt: skip
    return pairs


def thumbs_pairs(
    rated: Iterable[RatedResponse], anchors: dict[str, list[str]]
) -> tuple[list[Pair], dict[str, Messages]]:
    """Pairs from thumbs, and the prompts whose lone thumbs still need a policy sample.

    `anchors` maps a prompt to answers the policy gave it that nobody rated (or fresh samples).
    """
    by_prompt: dict[str, list[RatedResponse]] = defaultdict(list)
    for response in rated:
        if response.net_rating != 0:
            by_prompt[response.prompt_key].append(response)
    all_ups = sum(r.net_rating > 0 for responses in by_prompt.values() for r in responses)
    all_downs = sum(len(responses) for responses in by_prompt.values()) - all_ups
    lopsided = min(all_ups, all_downs) < MIN_MINORITY_SHARE * (all_ups + all_downs)
    pairs: list[Pair] = []
    need: dict[str, Messages] = {}
    for key, responses in by_prompt.items():
        ups = [r for r in responses if r.net_rating > 0]
        downs = [r for r in responses if r.net_rating < 0]
        found = [
            Pair(key, up.messages, up.text, down.text, "thumbs", max(up.seq, down.seq))
            for up in ups
            for down in downs
            if up.text != down.text
        ]
        if not found:
            majority = all_ups > all_downs if responses[0].net_rating > 0 else all_downs > all_ups
            if majority and lopsided:  # a sample would most likely share the verdict
                continue
            samples = [text for text in anchors.get(key, []) if all(text != r.text for r in responses)]
            if not samples:
                need[key] = responses[0].messages
                continue
            for i, response in enumerate(responses):
                sample = samples[i % len(samples)]
                chosen, rejected = (response.text, sample) if response.net_rating > 0 else (sample, response.text)
                found.append(Pair(key, response.messages, chosen, rejected, "thumbs_vs_sample", response.seq))
        pairs.extend(found[:MAX_PAIRS_PER_PROMPT])
    return pairs, need


def is_rewrite(row: CorrectedResponse) -> bool:
    """A correction that changes more than spacing (one that does not says nothing)."""
    return " ".join(row.text.split()) != " ".join(row.original.split())


def correction_pairs(rows: Iterable[CorrectedResponse]) -> list[Pair]:
    """A rewrite beats the answer it rewrote."""
    return [Pair(r.prompt_key, r.messages, r.text, r.original, "correction", r.seq) for r in rows if is_rewrite(r)]


def external_pairs(rows: Iterable[ExternalPairRow]) -> list[Pair]:
    return [
        Pair(r.prompt_key, r.messages, r.chosen, r.rejected, AI_SOURCE if r.source == AI_SOURCE else "external", r.seq)
        for r in rows
        if r.chosen != r.rejected
    ]


def answer_groups(pairs: Sequence[Pair]) -> list[int]:
    """Per pair, the index of its group: pairs that share an answer (directly or through others) are
    one group. A thumbs up paired with every thumbs down on its prompt gives a group whose pairs
    stand or fall together with how the one up answer is scored."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for p in pairs:
        parent[root((p.prompt_key, p.chosen))] = root((p.prompt_key, p.rejected))
    index: dict[tuple[str, str], int] = {}
    return [index.setdefault(root((p.prompt_key, p.chosen)), len(index)) for p in pairs]


def effective_count(groups: Sequence[int]) -> float:
    """How many independent pairs `groups` are worth: n^2 / sum of squared group sizes (Kish's
    effective sample size when a group's pairs agree). n for n groups of one, 1 for one group."""
    sizes = Counter(groups).values()
    return len(groups) ** 2 / sum(k * k for k in sizes) if groups else 0.0


def weighted_copies(pair: Pair, weight: float) -> int:
    """How often a pair of weight `weight` is trained on: its whole part, and one more for a fixed
    share (`weight`'s fraction) of the pairs, chosen by hash so a round and the next agree."""
    whole = int(weight)
    fraction = _hash_value("\x00".join((pair.prompt_key, pair.chosen, pair.rejected))) % 10_000 / 10_000
    return whole + (fraction < weight - whole)


def build_pairs(
    rated: Iterable[RatedResponse],
    ranked: Iterable[RankedCompletion],
    external: Iterable[ExternalPairRow],
    anchors: dict[str, list[str]],
    heldout: HeldOut | int,
    corrections: Iterable[CorrectedResponse] = (),
    ai_weight: float = 1.0,
) -> PairSet:
    """Every pair the store's feedback gives, split into train and the held-out slice (a percentage or HeldOut)."""
    if isinstance(heldout, int):
        heldout = HeldOut(heldout)
    from_thumbs, need = thumbs_pairs(rated, anchors)
    result = PairSet(need_samples=need)
    found = [*comparison_pairs(ranked), *from_thumbs, *external_pairs(external), *correction_pairs(corrections)]
    for pair in sorted(found, key=lambda p: p.seq):
        if pair.source == AI_SOURCE:
            if pair.prompt_key not in heldout:
                result.train.extend([pair] * weighted_copies(pair, ai_weight))
        else:
            (result.heldout if pair.prompt_key in heldout else result.train).append(pair)
    return result


class Sequenced(Protocol):
    seq: int


S = TypeVar("S", bound=Sequenced)


def continuation_pairs(train: Sequence[S], since_seq: int, replay_ratio: float, limit: int, seed: int) -> list[S]:
    """What a model trained on the pairs (or KTO's answers) up to `since_seq` continues on, in seq order.

    Every newer pair (the newest `limit`), and `replay_ratio` older pairs per new one drawn at random,
    so the model keeps what it learned while it follows the new feedback. Empty when nothing is new.
    """
    new = [p for p in train if p.seq > since_seq][-limit:]
    old = [p for p in train if p.seq <= since_seq]
    replay = random.Random(seed).sample(old, min(len(old), round(replay_ratio * len(new))))
    return sorted([*replay, *new], key=lambda p: p.seq)
