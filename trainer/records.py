"""What the dataset store holds: its SQLite schema and the rows it hands to pair building.

Plain data, no database connection: `trainer.pairs` works on these without SQLite.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

FEEDBACK_KINDS = ("thumbs", "comparison", "external_pair", "correction")  # people's: an "ai_pair" is not
RAW_PROMPT_ROLE = "raw"  # the one "message" of a /v1/completions prompt: its text, read with no chat template
EXCLUDED_USERS = "(SELECT user_id FROM raters WHERE excluded = 1)"  # SQL: raters left out (trainer/raters.py)
AI_SOURCE = "ai"  # ExternalPair.source of an AI judge's verdict (trainer/judge.py), stored as kind "ai_pair"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    completion_id TEXT,
    user_id TEXT,
    created_at REAL NOT NULL,
    ingested_at REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS completions (
    completion_id TEXT PRIMARY KEY,
    user_id TEXT,
    policy_version TEXT,
    prompt_key TEXT NOT NULL,
    messages TEXT NOT NULL,
    choices TEXT NOT NULL,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS completions_prompt ON completions(prompt_key);
CREATE TABLE IF NOT EXISTS ratings (
    completion_id TEXT NOT NULL,
    choice_index INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    rating INTEGER NOT NULL,
    policy_version TEXT,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (completion_id, choice_index, user_id)
);
CREATE TABLE IF NOT EXISTS comparisons (
    completion_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    ranking TEXT NOT NULL,
    strength INTEGER NOT NULL,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (completion_id, user_id)
);
CREATE TABLE IF NOT EXISTS corrections (
    completion_id TEXT NOT NULL,
    choice_index INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (completion_id, choice_index, user_id)
);
CREATE TABLE IF NOT EXISTS external_pairs (
    seq INTEGER PRIMARY KEY,
    prompt_key TEXT NOT NULL,
    prompt TEXT NOT NULL,
    chosen TEXT NOT NULL,
    rejected TEXT NOT NULL,
    source TEXT
);
CREATE TABLE IF NOT EXISTS judgements (
    digest TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    judged_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS raters (
    user_id TEXT PRIMARY KEY,
    judgements INTEGER NOT NULL,
    agreement REAL NOT NULL,
    excluded INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    prompt_key TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (prompt_key, policy_version)
);
CREATE TABLE IF NOT EXISTS head_to_head (
    completion_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    winner TEXT NOT NULL,
    loser TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (completion_id, user_id, winner, loser)
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    feedback_seq INTEGER NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    last_digest TEXT NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


def prompt_key(messages: Iterable[tuple[str, str]]) -> str:
    """The identity of a prompt: the same conversation so far, whoever sent it."""
    canonical = json.dumps([[role, content.strip()] for role, content in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def seconds(stamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


@dataclass
class IngestResult:
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    kinds: Counter = field(default_factory=Counter)  # stored events by kind


@dataclass(frozen=True)
class RatedResponse:
    """One choice of one completion with its users' net rating (+ up, - down)."""

    prompt_key: str
    messages: tuple[tuple[str, str], ...]
    completion_id: str
    choice_index: int
    text: str
    net_rating: int
    seq: int


@dataclass(frozen=True)
class RankedCompletion:
    prompt_key: str
    messages: tuple[tuple[str, str], ...]
    texts: tuple[str, ...]
    ranking: tuple[int, ...]
    strength: int
    seq: int


@dataclass(frozen=True)
class CorrectedResponse:
    """One choice of one completion and a user's rewrite of it (the latest, per user)."""

    prompt_key: str
    messages: tuple[tuple[str, str], ...]
    original: str
    text: str
    seq: int


@dataclass(frozen=True)
class Judgement:
    """One user's preference of one answer over another (trainer/raters.py scores it)."""

    better_messages: tuple[tuple[str, str], ...]
    better: str
    worse_messages: tuple[tuple[str, str], ...]
    worse: str
    seq: int


@dataclass(frozen=True)
class ExternalPairRow:
    prompt_key: str
    messages: tuple[tuple[str, str], ...]
    chosen: str
    rejected: str
    seq: int
    source: str = ""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    started_at: float
    finished_at: float | None
    outcome: str
    reason: str
    version: str
    feedback_seq: int
    metrics: dict[str, float]


def messages_from_json(raw: str) -> tuple[tuple[str, str], ...]:
    return tuple((role, content) for role, content in json.loads(raw))
