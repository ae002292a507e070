"""The trainer's dataset store: every event ingested once, in SQLite, with the latest rating winning.

Ingestion is idempotent by event id and by idempotency key (replays from Kafka or the feedback
relay insert nothing), and one batch is one transaction, so the consumer may commit its offsets
as soon as `ingest` returns. Feedback that arrives before its completion is stored anyway and
joins when the completion comes: pairs are built by joining at read time.
It takes (topic, bytes) records and knows nothing of Kafka but the positions the ingestor keeps
in it. Rounds and state are trainer/ledger.py's tables, the roll-out's signals trainer/signals.py's,
the judge's and the raters' reads trainer/judgements.py's.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.v1 import events_pb2
from trainer.judgements import JudgementStore
from trainer.ledger import RoundLedger
from trainer.records import (
    AI_SOURCE,
    EXCLUDED_USERS,
    FEEDBACK_KINDS,
    RAW_PROMPT_ROLE,
    SCHEMA,
    CorrectedResponse,
    ExternalPairRow,
    IngestResult,
    RankedCompletion,
    RatedResponse,
    messages_from_json,
    prompt_key,
    seconds,
)
from trainer.signals import RolloutSignals

log = logging.getLogger(__name__)


class DatasetStore(RoundLedger, RolloutSignals, JudgementStore):
    """SQLite in WAL mode; one connection guarded by a lock (ingestion and rounds share it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}
        if "pinned" not in columns:  # a dataset from before pinned requests were marked
            self._db.execute("ALTER TABLE completions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- ingestion

    def ingest(
        self, records: Iterable[tuple[str, bytes]], positions: dict[tuple[str, int], tuple[int, str]] | None = None
    ) -> IngestResult:
        """Store a batch of (topic, payload) records in one transaction; replays are no-ops.

        `positions` ({(topic, partition): (next offset, digest of the last record)}) are saved in
        the same transaction: the consumer's place in Kafka moves only with the rows it read.
        """
        result = IngestResult()
        now = time.time()
        with self._transaction() as db:
            for (topic, partition), (offset, digest) in (positions or {}).items():
                db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)", (topic, partition, offset, digest))
            for topic, payload in records:
                # Each record in a savepoint: one it cannot use is undone, skipped and counted, never
                # left half-stored, and never stops the batch (it would stop it again on every restart).
                db.execute("SAVEPOINT record")
                try:
                    kind = self._ingest_one(db, topic, payload, now)
                except sqlite3.OperationalError:
                    raise  # disk full, locked: the store's trouble, not the record's; the batch is retried
                except (DecodeError, ValueError, IndexError, KeyError, TypeError, sqlite3.IntegrityError) as exc:
                    db.execute("ROLLBACK TO record")
                    db.execute("RELEASE record")
                    log.warning("skipping a record on %s it cannot use: %s: %s", topic, type(exc).__name__, exc)
                    result.invalid += 1
                    continue
                db.execute("RELEASE record")
                if kind:
                    result.stored += 1
                    result.kinds[kind] += 1
                else:
                    result.duplicates += 1
        return result

    def _insert_event(self, db, event, topic: str, kind: str, payload: bytes, now: float, key: str | None) -> int:
        """The new event's seq, or 0 when its id or idempotency key was seen before."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO events (event_id, idempotency_key, topic, kind, completion_id, user_id,"
            " created_at, ingested_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, key, topic, kind, event.completion_id, event.user_id,
             seconds(event.created_at), now, payload),
        )  # fmt: skip
        return cursor.lastrowid if cursor.rowcount else 0

    def _ingest_one(self, db: sqlite3.Connection, topic: str, payload: bytes, now: float) -> str:
        """The kind of the event stored, or '' when it was stored before."""
        if topic == TOPIC_COMPLETIONS:
            event = events_pb2.Completion.FromString(payload)
            if not event.event_id or not event.completion_id:
                raise ValueError("a completion without event_id or completion_id")
            seq = self._insert_event(db, event, topic, "completion", payload, now, None)
            if seq:
                messages = [(m.role, m.content) for m in event.messages]
                if event.prompt_text:  # the prompt as the model read it (a text prompt, tools): not templated again
                    messages = [(RAW_PROMPT_ROLE, event.prompt_text)]
                choices = sorted(event.choices, key=lambda c: c.index)
                db.execute(
                    "INSERT OR IGNORE INTO completions (completion_id, user_id, policy_version, prompt_key,"
                    " messages, choices, created_at, seq, pinned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.completion_id, event.user_id, event.policy_version, prompt_key(messages),
                     json.dumps(messages), json.dumps([c.text for c in choices]),
                     seconds(event.created_at), seq, int(event.pinned)),
                )  # fmt: skip
            return "completion" if seq else ""
        if topic != TOPIC_FEEDBACK:
            raise ValueError(f"unexpected topic {topic}")
        event = events_pb2.FeedbackEvent.FromString(payload)
        kind = event.WhichOneof("kind")
        if not event.event_id or kind is None:
            raise ValueError("a feedback event without event_id or kind")
        if kind == "comparison":
            _check_comparison(event)
        if kind == "external_pair" and event.external_pair.source == AI_SOURCE:
            kind = "ai_pair"  # a judge's verdict (trainer/judge.py): kept apart from people's feedback
        seq = self._insert_event(db, event, topic, kind, payload, now, event.idempotency_key or None)
        if not seq:
            return ""
        created = seconds(event.created_at)
        if kind == "thumbs":
            rating = 1 if event.thumbs.rating == events_pb2.RATING_UP else -1
            # The latest rating by created_at wins; a replay of an older one changes nothing.
            db.execute(
                "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " rating=excluded.rating, policy_version=excluded.policy_version,"
                " created_at=excluded.created_at, seq=excluded.seq WHERE excluded.created_at >= ratings.created_at",
                (event.completion_id, event.thumbs.choice_index, event.user_id, rating,
                 event.policy_version, created, seq),
            )  # fmt: skip
        elif kind == "comparison":
            db.execute(
                "INSERT INTO comparisons VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " ranking=excluded.ranking, strength=excluded.strength, created_at=excluded.created_at,"
                " seq=excluded.seq WHERE excluded.created_at >= comparisons.created_at",
                (event.completion_id, event.user_id, json.dumps(list(event.comparison.ranking)),
                 event.comparison.strength, created, seq),
            )  # fmt: skip
            self._store_head_to_head(db, event, created)
        elif kind == "correction":
            correction = event.correction
            # One rewrite per user and choice: the latest by created_at stands, as with ratings.
            db.execute(
                "INSERT INTO corrections VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                " text=excluded.text, comment=excluded.comment, created_at=excluded.created_at, seq=excluded.seq"
                " WHERE excluded.created_at >= corrections.created_at",
                (event.completion_id, correction.choice_index, event.user_id, correction.text, correction.comment,
                 created, seq),
            )  # fmt: skip
        else:
            pair = event.external_pair
            messages = [(m.role, m.content) for m in pair.prompt]
            db.execute(
                "INSERT OR IGNORE INTO external_pairs VALUES (?, ?, ?, ?, ?, ?)",
                (seq, prompt_key(messages), json.dumps(messages), pair.chosen, pair.rejected, pair.source),
            )
        return kind

    # -- reads for pairs and prompts

    def rated_responses(self) -> list[RatedResponse]:
        """Every rated choice whose completion has arrived, with the net rating over its users."""
        rows = self._query(
            "SELECT c.prompt_key, c.messages, c.choices, r.completion_id, r.choice_index,"
            " SUM(r.rating), MAX(r.seq) FROM ratings r JOIN completions c USING (completion_id)"
            f" WHERE r.user_id NOT IN {EXCLUDED_USERS} GROUP BY r.completion_id, r.choice_index ORDER BY MAX(r.seq)"
        )
        rated = []
        for key, messages, choices, completion_id, index, net, seq in rows:
            texts = json.loads(choices)
            if 0 <= index < len(texts):
                turns = messages_from_json(messages)
                rated.append(RatedResponse(key, turns, completion_id, index, texts[index], net, seq))
        return rated

    def ranked_completions(self) -> list[RankedCompletion]:
        rows = self._query(
            "SELECT c.prompt_key, c.messages, c.choices, k.ranking, k.strength, k.seq"
            f" FROM comparisons k JOIN completions c USING (completion_id) WHERE k.user_id NOT IN {EXCLUDED_USERS}"
            " ORDER BY k.seq"
        )
        return [
            RankedCompletion(key, messages_from_json(messages), tuple(json.loads(choices)), tuple(json.loads(ranking)),
                             strength, seq)
            for key, messages, choices, ranking, strength, seq in rows
        ]  # fmt: skip

    def corrections(self) -> list[CorrectedResponse]:
        """Every rewrite whose completion has arrived, with the original answer, in seq order."""
        rows = self._query(
            "SELECT c.prompt_key, c.messages, c.choices, r.choice_index, r.text, r.seq"
            f" FROM corrections r JOIN completions c USING (completion_id) WHERE r.user_id NOT IN {EXCLUDED_USERS}"
            " ORDER BY r.seq"
        )
        found = []
        for key, messages, choices, index, text, seq in rows:
            texts = json.loads(choices)
            if 0 <= index < len(texts):
                found.append(CorrectedResponse(key, messages_from_json(messages), texts[index], text, seq))
        return found

    def external_pairs(self) -> list[ExternalPairRow]:
        rows = self._query("SELECT prompt_key, prompt, chosen, rejected, seq, source FROM external_pairs ORDER BY seq")
        return [
            ExternalPairRow(key, messages_from_json(prompt), chosen, rejected, seq, source or "")
            for key, prompt, chosen, rejected, seq, source in rows
        ]

    def unrated_choices(self, prompt_keys: Iterable[str]) -> dict[str, list[str]]:
        """Texts of choices nobody rated, by prompt: the policy's own samples for those prompts."""
        wanted = set(prompt_keys)
        rated = {(r[0], r[1]) for r in self._query("SELECT completion_id, choice_index FROM ratings")}
        found: dict[str, list[str]] = {}
        for key, completion_id, choices in self._query("SELECT prompt_key, completion_id, choices FROM completions"):
            if key in wanted:
                for index, text in enumerate(json.loads(choices)):
                    if (completion_id, index) not in rated:
                        found.setdefault(key, []).append(text)
        return found

    def samples(self, policy_version: str) -> dict[str, str]:
        rows = self._query("SELECT prompt_key, text FROM samples WHERE policy_version = ?", (policy_version,))
        return dict(rows)

    def save_samples(self, policy_version: str, texts: dict[str, str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO samples VALUES (?, ?, ?)",
                [(key, policy_version, text) for key, text in texts.items()],
            )

    def prompts(self, limit: int) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
        """Distinct prompts from real traffic, most recent first: (prompt_key, messages)."""
        rows = self._query(
            "SELECT prompt_key, messages FROM completions WHERE seq IN"
            " (SELECT MAX(seq) FROM completions GROUP BY prompt_key) ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [(key, messages_from_json(messages)) for key, messages in rows]

    def prompt_keys(self) -> list[str]:
        """Every distinct prompt seen, in traffic or imported."""
        rows = self._query("SELECT prompt_key FROM completions UNION SELECT prompt_key FROM external_pairs")
        return [key for (key,) in rows]

    # -- counts

    def feedback_seq(self) -> int:
        """The seq of the newest feedback event stored (0 when none)."""
        placeholders = ",".join("?" * len(FEEDBACK_KINDS))
        rows = self._query(f"SELECT MAX(seq) FROM events WHERE kind IN ({placeholders})", FEEDBACK_KINDS)
        return rows[0][0] or 0

    def count_feedback(self, after_seq: int = 0) -> int:
        placeholders = ",".join("?" * len(FEEDBACK_KINDS))
        rows = self._query(
            f"SELECT COUNT(*) FROM events WHERE kind IN ({placeholders}) AND seq > ?"
            f" AND COALESCE(user_id, '') NOT IN {EXCLUDED_USERS}",  # a left-out rater's feedback starts no round
            (*FEEDBACK_KINDS, after_seq),
        )
        return rows[0][0]

    def count_events(self) -> dict[str, int]:
        return dict(self._query("SELECT kind, COUNT(*) FROM events GROUP BY kind"))

    def waiting_feedback(self) -> int:
        """Ratings, comparisons and corrections whose completion has not arrived yet."""
        rows = self._query(
            "SELECT (SELECT COUNT(*) FROM ratings WHERE completion_id NOT IN (SELECT completion_id FROM completions))"
            " + (SELECT COUNT(*) FROM comparisons WHERE completion_id NOT IN (SELECT completion_id FROM completions))"
            " + (SELECT COUNT(*) FROM corrections WHERE completion_id NOT IN (SELECT completion_id FROM completions))"
        )
        return rows[0][0]

    def oldest_feedback_time(self, after_seq: int, up_to_seq: int) -> float | None:
        """When the oldest feedback event in (after_seq, up_to_seq] was accepted."""
        placeholders = ",".join("?" * len(FEEDBACK_KINDS))
        rows = self._query(
            f"SELECT MIN(created_at) FROM events WHERE kind IN ({placeholders}) AND seq > ? AND seq <= ?",
            (*FEEDBACK_KINDS, after_seq, up_to_seq),
        )
        return rows[0][0]

    def raw_events(self) -> Iterator[dict]:
        """Every stored event as JSON-ready dicts, in arrival order (for export)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, kind, payload FROM events ORDER BY seq").fetchall()
        for seq, topic, kind, payload in rows:
            message = events_pb2.Completion() if topic == TOPIC_COMPLETIONS else events_pb2.FeedbackEvent()
            message.ParseFromString(payload)
            yield {"seq": seq, "topic": topic, "kind": kind, "event": MessageToDict(message)}


def _check_comparison(event: events_pb2.FeedbackEvent) -> None:
    """A ranking names each choice once, within the choices the event says it compares (ValueError)."""
    ranking, versions = list(event.comparison.ranking), list(event.choice_policy_versions)
    if len(ranking) < 2 or len(set(ranking)) != len(ranking) or min(ranking) < 0:
        raise ValueError(f"comparison {event.event_id}: ranking {ranking} is not a ranking of distinct choices")
    if versions and max(ranking) >= len(versions):
        raise ValueError(f"comparison {event.event_id}: ranking {ranking} points past its {len(versions)} choices")
