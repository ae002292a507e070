"""The feedback outbox: SQLite in WAL mode, synchronous=FULL, one writer thread.

An event is committed (fsynced) here before the API answers 202; the relay then publishes it
to Kafka and marks it published. Concurrent appends are committed together (group commit), so
durability costs one fsync per batch, not per event. The idempotency key is unique: a retried
request finds the event it already created.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    kafka_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS events_unpublished ON events (published_at, seq);
"""
_GROUP_MAX = 1024


class OutboxFull(Exception):
    """Too many events wait for Kafka; the caller should retry later."""


@dataclass(frozen=True)
class OutboxRecord:
    event_id: str
    idempotency_key: str
    kafka_key: str
    kind: str
    payload: bytes


@dataclass(frozen=True)
class Appended:
    event_id: str
    duplicate: bool


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    kafka_key: str
    payload: bytes


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Outbox:
    def __init__(self, path: Path, max_pending: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_pending = max_pending
        self._writer = _connect(path)
        self._writer.executescript(_SCHEMA)
        self._reader = _connect(path)
        self._lock = threading.Lock()  # guards _pending and the reader connection
        self._pending = self._reader.execute("SELECT COUNT(*) FROM events WHERE published_at IS NULL").fetchone()[0]
        self._queue: queue.Queue[tuple[OutboxRecord, Future] | None] = queue.Queue()
        self.new_events = threading.Event()  # set when rows were committed: wakes the relay
        self._thread = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, record: OutboxRecord) -> Future[Appended]:
        """Queue `record` for the next group commit; the future resolves once it is on disk."""
        if self._pending >= self.max_pending:
            raise OutboxFull(f"{self._pending} events are waiting for Kafka")
        future: Future[Appended] = Future()
        self._queue.put((record, future))
        return future

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            while len(group) < _GROUP_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list[tuple[OutboxRecord, Future]]) -> None:
        results: list[Appended] = []
        try:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            inserted = 0
            for record, _ in group:
                cursor = conn.execute(
                    "INSERT INTO events (event_id, idempotency_key, kafka_key, kind, payload, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                    (
                        record.event_id,
                        record.idempotency_key,
                        record.kafka_key,
                        record.kind,
                        record.payload,
                        time.time(),
                    ),
                )
                if cursor.rowcount == 1:
                    inserted += 1
                    results.append(Appended(record.event_id, duplicate=False))
                else:
                    row = conn.execute(
                        "SELECT event_id FROM events WHERE idempotency_key = ?", (record.idempotency_key,)
                    ).fetchone()
                    results.append(Appended(row[0], duplicate=True))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("outbox commit failed")
            try:
                self._writer.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for _, future in group:
                future.set_exception(exc)
            return
        with self._lock:
            self._pending += inserted
        self.new_events.set()
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    # -- the relay's side

    def unpublished(self, limit: int) -> list[PendingEvent]:
        with self._lock:
            rows = self._reader.execute(
                "SELECT seq, kafka_key, payload FROM events WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [PendingEvent(*row) for row in rows]

    def mark_published(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            conn = self._reader
            conn.execute("BEGIN IMMEDIATE")
            changed = 0
            for seq in seqs:
                changed += conn.execute(
                    "UPDATE events SET published_at = ? WHERE seq = ? AND published_at IS NULL", (time.time(), seq)
                ).rowcount
            conn.execute("COMMIT")
            self._pending -= changed

    def replay_published(self, keep_published: list[int]) -> int:
        """Mark every retained published event unpublished again (the broker lost them)."""
        with self._lock:
            conn = self._reader
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.execute("UPDATE events SET published_at = NULL WHERE published_at IS NOT NULL").rowcount
            for seq in keep_published:
                changed -= conn.execute("UPDATE events SET published_at = ? WHERE seq = ?", (time.time(), seq)).rowcount
            conn.execute("COMMIT")
            self._pending += changed
        self.new_events.set()
        return changed

    def prune(self, retention_s: float) -> int:
        """Forget published events older than the retention (their idempotency keys go with them)."""
        with self._lock:
            return self._reader.execute(
                "DELETE FROM events WHERE published_at IS NOT NULL AND published_at < ?", (time.time() - retention_s,)
            ).rowcount

    def count(self) -> int:
        with self._lock:
            return self._reader.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._writer.close()
        self._reader.close()
