"""AI feedback (RLAIF): a judge model compares pairs of the policy's served answers against a constitution.

Off unless `judge.url` names an OpenAI-compatible chat API (another vLLM, a hosted model, or
Flywheel's own serving). Each round, before its pairs are collected, the judge sees up to
`judge.pairs_per_round` pairs of distinct answers that users were served for the same training
prompt and that it has not judged yet. It is asked twice, with the answers in both orders, to
cancel position bias: two verdicts that agree make a pair; a disagreement, or a reply that names
neither answer, is a tie and sends nothing. Every judgement is remembered, so no pair is asked twice.

Verdicts travel the path every imported pair takes: the feedback service's import route (admin
key) with `source: "ai"`, its outbox, the relay, Kafka, the trainer's ingest. The store files
them as kind `ai_pair`, apart from people's feedback: they never start a round, never count
toward feedback_to_policy, carry no completion for the roll-out controller to count (roll-outs
are decided on human feedback only), and are never held out (the reward model's gate measures
agreement with people). Training counts each AI pair `judge.weight` times (trainer/pairs.py).

Our own client of the chat API (the openai package does the HTTP), because the judge's questions
and the parsing of its one-letter answers are the whole of it; no library has this loop.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from flywheel.events import MAX_PAIR_PROMPT_CHARS
from flywheel.training_settings import JudgeSection
from trainer.dataset import DatasetStore
from trainer.pairs import HeldOut, Messages
from trainer.records import AI_SOURCE

log = logging.getLogger(__name__)

IMPORT_ROLES = ("system", "user", "assistant")  # what an imported pair's messages may hold (not raw or tool turns)
MAX_ANSWER_CHARS = 4_000  # of each answer shown to the judge (a long answer keeps its start)

DEFAULT_CONSTITUTION = """\
- Prefer the answer that is more helpful: it addresses what the user asked, correctly and completely.
- Prefer the answer that is honest: it does not make things up and says when it is unsure.
- Prefer the answer that is harmless: it does not help with dangerous or hateful requests.
- Prefer the answer that is clear and to the point over one that rambles or repeats itself.
"""

SYSTEM = """You judge two answers of an AI assistant to the same conversation, by these principles:

{constitution}
Reply with a single letter: A if answer A follows the principles better, B if answer B does."""

USER = """Conversation:
{conversation}

Answer A:
{first}

Answer B:
{second}

Which answer follows the principles better? Reply with A or B only."""

_LETTER = re.compile(r"\b([AB])\b")


class JudgeError(RuntimeError):
    """The judge's API cannot be used (unreachable, refused, no model): the round goes on without it."""


def parse_verdict(text: str) -> int | None:
    """0 for A, 1 for B: the first standalone letter of the reply; None when it names neither."""
    found = _LETTER.search(text.strip()[:200])  # capitals only: "As a judge, B ..." names B
    return None if found is None else "AB".index(found.group(1))


def render(messages: Messages) -> str:
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in messages)


def pair_digest(prompt_key: str, first: str, second: str) -> str:
    """The same for both orders of a pair."""
    a, b = sorted((first, second))
    return hashlib.sha256("\x00".join((prompt_key, a, b)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Candidate:
    prompt_key: str
    messages: Messages
    first: str
    second: str

    @property
    def digest(self) -> str:
        return pair_digest(self.prompt_key, self.first, self.second)


@dataclass
class Verdict:
    candidate: Candidate
    winner: int | None  # 0: first, 1: second, None: a tie (disagreement or no answer)
    replies: tuple[str, str] = ("", "")
    refused: bool = False  # the judge's API refused a question (400): not judged, asked again later


@dataclass
class JudgeReport:
    judged: int = 0
    pairs: int = 0  # verdicts that agreed in both orders
    ties: int = 0  # the two orders disagreed
    unparsed: int = 0  # a reply named neither answer
    refused: int = 0  # the judge's API refused the question: not remembered, asked again in a later round
    accepted: int = 0  # by the feedback service (duplicates are not)
    stored: int = 0  # back through Kafka within wait_s
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {f"judge_{name}": float(getattr(self, name))
                for name in ("judged", "pairs", "ties", "unparsed", "refused", "accepted", "stored")}  # fmt: skip


class Judge:
    """One judge endpoint; `compare` asks it about one pair in both orders."""

    def __init__(self, config: JudgeSection) -> None:
        self.config = config
        self.client = openai.OpenAI(
            base_url=config.url, api_key=config.api_key.get_secret_value() or "none", timeout=config.timeout_s,
            max_retries=1,
        )  # fmt: skip
        self.constitution = load_constitution(config.constitution)
        self._model = config.model

    @property
    def model(self) -> str:
        if not self._model:
            try:
                models = self.client.models.list().data
            except openai.OpenAIError as exc:
                raise JudgeError(f"the judge at {self.config.url} did not list its models: {exc}") from None
            if not models:
                raise JudgeError(f"the judge at {self.config.url} serves no model")
            self._model = models[0].id
        return self._model

    def ask(self, messages: Messages, first: str, second: str) -> str | None:
        """The judge's reply; None when it refused this question (a 400: too long for its context, say)."""
        content = USER.format(conversation=render(messages), first=first[:MAX_ANSWER_CHARS],
                              second=second[:MAX_ANSWER_CHARS])  # fmt: skip
        try:
            reply = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": SYSTEM.format(constitution=self.constitution)},
                    {"role": "user", "content": content},
                ],
                temperature=0.0,
                max_tokens=8,
                store=False,  # Flywheel's own serving as the judge: its questions are not training data
            )
        except openai.BadRequestError as exc:
            log.debug("the judge refused a question: %s", exc)
            return None
        except openai.OpenAIError as exc:
            raise JudgeError(f"the judge at {self.config.url} failed: {type(exc).__name__}: {exc}") from None
        return (reply.choices[0].message.content or "") if reply.choices else ""

    def compare(self, candidate: Candidate) -> Verdict:
        forward = self.ask(candidate.messages, candidate.first, candidate.second)
        backward = self.ask(candidate.messages, candidate.second, candidate.first)
        if forward is None or backward is None:
            return Verdict(candidate, None, (forward or "", backward or ""), refused=True)
        a, b = parse_verdict(forward), parse_verdict(backward)
        winner = a if a is not None and b is not None and a != b else None  # B backwards is A forwards
        return Verdict(candidate, winner, (forward, backward))


def load_constitution(path: str) -> str:
    if not path:
        return DEFAULT_CONSTITUTION
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise JudgeError(f"cannot read the judge's constitution {path}: {exc}") from None
    if not text:
        raise JudgeError(f"the judge's constitution {path} is empty")
    return text + "\n"


def candidates(store: DatasetStore, heldout: HeldOut, limit: int) -> list[Candidate]:
    """Pairs of distinct served answers to one training prompt, not judged yet: newest prompts first, one
    pair per prompt in turn, so `limit` pairs spread over as many prompts as there are."""
    judged = store.judged_digests()
    by_prompt = [
        (key, messages, texts) for key, messages, texts in store.answers_by_prompt()
        if key not in heldout and sum(len(content) for _, content in messages) <= MAX_PAIR_PROMPT_CHARS
        and all(role in IMPORT_ROLES for role, _ in messages)
    ]  # fmt: skip
    queues: list[list[Candidate]] = []
    for key, messages, texts in by_prompt:
        queue = []
        for i, first in enumerate(texts):
            for second in texts[i + 1 :]:
                candidate = Candidate(key, messages, first, second)
                if candidate.digest not in judged:
                    queue.append(candidate)
        if queue:
            queues.append(queue)
    chosen: list[Candidate] = []
    while queues and len(chosen) < limit:
        for queue in list(queues):
            chosen.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
            if len(chosen) == limit:
                break
    return chosen


def submit(config: JudgeSection, admin_key: str, verdicts: list[Verdict]) -> tuple[int, int]:
    """The agreed verdicts to the feedback service's import route: (accepted, duplicates)."""
    pairs = []
    for verdict in verdicts:
        if verdict.winner is None:
            continue
        c = verdict.candidate
        chosen, rejected = (c.first, c.second) if verdict.winner == 0 else (c.second, c.first)
        pairs.append({"messages": [{"role": role, "content": text} for role, text in c.messages],
                      "chosen": chosen, "rejected": rejected})  # fmt: skip
    if not pairs:
        return 0, 0
    url = f"{config.feedback_url.rstrip('/')}/v1/preferences/import"
    try:
        response = httpx.post(url, json={"pairs": pairs, "source": AI_SOURCE},
                              headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)  # fmt: skip
    except httpx.HTTPError as exc:
        raise JudgeError(f"the feedback service at {config.feedback_url} did not take the verdicts: {exc}") from None
    if response.status_code != 202:
        raise JudgeError(f"the feedback service refused the verdicts ({response.status_code}): {response.text[:200]}")
    body = response.json()
    return int(body["accepted"]), int(body["duplicates"])


def judge_round(
    store: DatasetStore, config: JudgeSection, admin_key: str, heldout: HeldOut, judge: Judge | None = None,
    catch_up: Callable[[], None] | None = None,
) -> JudgeReport:
    """Judge this round's pairs, send the verdicts, wait (up to wait_s) until ingest has stored them.

    `catch_up` stores what the topics hold, where no ingest thread does it meanwhile.
    """
    report = JudgeReport()
    chosen = candidates(store, heldout, config.pairs_per_round)
    if not chosen:
        return report
    try:
        judge = judge or Judge(config)
        verdicts = []
        for candidate in chosen:
            verdict = judge.compare(candidate)
            if verdict.refused:
                report.refused += 1
                continue
            verdicts.append(verdict)
            report.judged += 1
            if verdict.winner is not None:
                report.pairs += 1
            elif any(parse_verdict(reply) is None for reply in verdict.replies):
                report.unparsed += 1
            else:
                report.ties += 1
        if report.refused == len(chosen):
            raise JudgeError(f"the judge at {config.url} refused every question (is {judge.model} a chat model "
                             "that takes temperature, max_tokens and store?)")  # fmt: skip
        before = store.count_events().get("ai_pair", 0)
        report.accepted, _ = submit(config, admin_key, verdicts)
        store.save_judgements([(v.candidate.digest, "tie" if v.winner is None else "pair") for v in verdicts])
    except JudgeError as exc:
        log.warning("AI feedback skipped this round: %s", exc)
        report.errors.append(str(exc))
        return report
    deadline = time.monotonic() + config.wait_s
    while True:
        if catch_up is not None:
            catch_up()
        report.stored = store.count_events().get("ai_pair", 0) - before
        if report.stored >= report.accepted or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    log.info("the judge compared %d pairs: %d verdicts, %d ties, %d unreadable; %d sent, %d back through Kafka",
             report.judged, report.pairs, report.ties, report.unparsed, report.accepted, report.stored)  # fmt: skip
    return report
