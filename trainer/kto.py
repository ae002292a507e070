"""KTO on the policy's LoRA adapter, straight from single rated answers (TRL 1.12's KTOTrainer).

Most live feedback is a thumb on one answer, not a comparison of two. The reward model and DPO
need pairs, so a lone thumb is paired with a sample of the policy that nobody rated (trainer/
pairs.py): the pair says as much about that sample as about the rated answer. KTO
(https://arxiv.org/abs/2402.01306) learns from the thumbs as they are: a thumbs-up answer is a
desirable example, a thumbs-down one undesirable, and the loss pushes each one's log-ratio to the
reference above or below a KL estimate of the batch. A comparison or an imported pair gives both
an example of each kind.

Reference, continuation and gating are DPO's (trainer/dpo.py): the reference is the adapter the
round starts from, a KTO-trained start goes on with the examples new since it (older ones
replayed), and the round's reward model still judges what is published.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from flywheel.settings import KTOSection
from trainer.dpo import fit_offline
from trainer.pairs import Messages, Pair
from trainer.ppo import PolicyLora, PolicyTraining
from trainer.records import RatedResponse
from trainer.reward import prompt_text

PAIRED_SOURCES = ("comparison", "external", "correction", "ai")  # pairs whose two answers both carry a verdict


@dataclass(frozen=True)
class Example:
    """One answer with its verdict: desirable (thumbs up, chosen) or not (thumbs down, rejected)."""

    prompt_key: str
    messages: Messages
    text: str
    desirable: bool
    seq: int


def kto_examples(rated: Iterable[RatedResponse], pairs: Iterable[Pair], heldout: Container[str]) -> list[Example]:
    """The round's KTO examples in seq order: rated answers on training prompts, and both sides of real pairs.

    Pairs built from thumbs are left out: their rated answer is already an example, and the other
    side is a sample nobody rated. An answer seen twice with one verdict counts once.
    """
    found: dict[tuple[str, str, bool], Example] = {}
    for response in rated:
        if response.net_rating != 0 and response.prompt_key not in heldout:
            example = Example(response.prompt_key, response.messages, response.text, response.net_rating > 0,
                              response.seq)  # fmt: skip
            found.setdefault((example.prompt_key, example.text, example.desirable), example)
    for pair in pairs:
        if pair.source in PAIRED_SOURCES and pair.prompt_key not in heldout:
            for text, desirable in ((pair.chosen, True), (pair.rejected, False)):
                example = Example(pair.prompt_key, pair.messages, text, desirable, pair.seq)
                found.setdefault((pair.prompt_key, text, desirable), example)
    return sorted(found.values(), key=lambda e: e.seq)


def kto_rows(tokenizer, examples: Sequence[Example], seed: int) -> list[dict]:
    """TRL's unpaired preference format, in a seeded random order.

    KTOTrainer reads its rows in order (it pairs each answer with its neighbour's prompt for the
    KL estimate), so the order is shuffled here: in seq order a batch would be all one verdict.
    """
    rows = [{"prompt": prompt_text(tokenizer, e.messages), "completion": e.text + tokenizer.eos_token,
             "label": e.desirable} for e in examples]  # fmt: skip
    random.Random(seed).shuffle(rows)
    return rows


def balanced_weights(examples: Sequence[Example]) -> tuple[float, float]:
    """(desirable, undesirable) loss weights that give both verdicts the same total weight.

    The KTO paper wants desirable_weight x n_desirable / (undesirable_weight x n_undesirable) in
    [1, 4/3]; thumbs down usually outnumber thumbs up (or the reverse), so the rarer side is
    weighted up to the other's count: the ratio is 1.
    """
    desirable = sum(e.desirable for e in examples)
    undesirable = len(examples) - desirable
    if not desirable or not undesirable:
        return 1.0, 1.0
    if desirable < undesirable:
        return undesirable / desirable, 1.0
    return 1.0, desirable / undesirable


def run_kto(
    base_model: str,
    start_adapter: Path | None,
    examples: Sequence[Example],
    config: KTOSection,
    lora: PolicyLora,
    work_dir: Path,
    seed: int = 0,
    report: Callable[[int, int, dict], None] | None = None,
) -> PolicyTraining:
    """KTO of the adapter in `start_adapter` (a fresh one when None) on `examples`; the trained PeftModel."""
    from trl import KTOConfig, KTOTrainer

    if len(examples) < 2:
        raise ValueError(f"KTO needs at least 2 rated answers, got {len(examples)}")
    desirable_weight, undesirable_weight = balanced_weights(examples)
    run = fit_offline(
        "kto", base_model, start_adapter, lora, config, work_dir, seed, len(examples),
        lambda tokenizer: kto_rows(tokenizer, examples, seed),
        partial(KTOTrainer, ref_model=None),  # a PeftModel: TRL keeps the start adapter, frozen, as the reference
        KTOConfig, report, beta=config.beta, desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        train_sampling_strategy="sequential",  # the KL estimate pairs neighbours; kto_rows shuffled them
    )  # fmt: skip
    nan = float("nan")
    desirable = sum(e.desirable for e in examples)
    return run.training({
        "kto_kl_last": run.last.get("kl", nan),
        "kto_margin_last": run.last.get("rewards/margins", nan),
        "kto_desirable": float(desirable),
        "kto_undesirable": float(len(examples) - desirable),
        "kto_desirable_weight": desirable_weight,
        "kto_undesirable_weight": undesirable_weight,
        "kto_beta": config.beta,
    })  # fmt: skip
