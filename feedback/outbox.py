"""The feedback outbox: one SQLite file in WAL mode, shared by two processes.

`Outbox` (the service process) commits each accepted event, fsynced, before the API answers
202; concurrent appends share one commit (group commit), so durability costs one fsync per
batch, not per event. `OutboxLedger` (the relay process) reads what is unpublished and marks
what Kafka acknowledged. The idempotency key is unique: a retried request finds its event.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
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
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id TEXT PRIMARY KEY,
    kafka_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL
);
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


_LOCK_WAIT_S = 30.0


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    # timeout=0: SQLite's own busy handler sleeps in steps of up to 100 ms, which showed up as
    # 100-300 ms p99 latencies when the relay's marks met a request's commit; _locked() retries
    # every millisecond instead.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0)
    _locked(conn.execute, "PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def _locked(call, *args):
    """Run a statement, retrying while another connection holds the write lock."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            return call(*args)
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.001)


class Outbox:
    """The service's side: durable appends, and how many events still wait for Kafka."""

    def __init__(
        self,
        path: Path,
        max_pending: int,
        wake: Callable[[], None] = lambda: None,
        observe_commit: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_pending = max_pending
        self._wake = wake  # tells the relay that rows were committed
        self._observe_commit = observe_commit  # seconds per group commit, fsync included
        self._writer = _connect(path, "FULL")
        _locked(self._writer.executescript, _SCHEMA)
        # Checkpoints run on the relay's side (OutboxLedger.checkpoint), not in a request's commit.
        self._writer.execute("PRAGMA wal_autocheckpoint=0")
        self._counter = _connect(path, "NORMAL")
        self._lock = threading.Lock()
        self._pending = 0
        self._counted_at = 0.0
        self._queue: queue.Queue[tuple[list[OutboxRecord], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="outbox-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events not yet acknowledged by Kafka: counted in the file at most every 250 ms."""
        with self._lock:
            if time.monotonic() - self._counted_at > 0.25:
                self._pending = self._counter.execute(
                    "SELECT COUNT(*) FROM events WHERE published_at IS NULL"
                ).fetchone()[0]
                self._counted_at = time.monotonic()
            return self._pending

    def append_many(self, records: list[OutboxRecord]) -> Future[list[Appended]]:
        """Queue records for the next group commit; the future resolves once all are on disk."""
        pending = self.pending
        if pending + len(records) > self.max_pending:
            raise OutboxFull(f"{pending} events are waiting for Kafka")
        future: Future[list[Appended]] = Future()
        self._queue.put((records, future))
        return future

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group = [item]
            size = len(item[0])
            while size < _GROUP_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                group.append(nxt)
                size += len(nxt[0])
            self._commit(group)

    def _commit(self, group: list[tuple[list[OutboxRecord], Future]]) -> None:
        records = [record for batch, _ in group for record in batch]
        rows = [(r.event_id, r.idempotency_key, r.kafka_key, r.kind, r.payload, time.time()) for r in records]
        started = time.perf_counter()
        try:
            conn = self._writer
            _locked(conn.execute, "BEGIN IMMEDIATE")
            inserted = conn.executemany(
                "INSERT INTO events (event_id, idempotency_key, kafka_key, kind, payload, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                rows,
            ).rowcount
            if inserted == len(records):
                results = [Appended(r.event_id, duplicate=False) for r in records]
            else:  # some were retries: answer them with the event they first created
                results = []
                for record in records:
                    stored = conn.execute(
                        "SELECT event_id FROM events WHERE idempotency_key = ?", (record.idempotency_key,)
                    ).fetchone()[0]
                    results.append(Appended(stored, duplicate=stored != record.event_id))
            _locked(conn.execute, "COMMIT")
        except sqlite3.Error as exc:
            log.error("outbox commit failed, %d events refused: %s", len(records), exc)  # a full disk: no traceback
            try:
                self._writer.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for _, future in group:
                future.set_exception(exc)
            return
        self._observe_commit(time.perf_counter() - started)
        with self._lock:
            self._pending += inserted
        self._wake()
        position = 0
        for batch, future in group:
            future.set_result(results[position : position + len(batch)])
            position += len(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._writer.close()
        self._counter.close()


class OutboxLedger:
    """The relay's side: unpublished events in order, and marks for what Kafka acknowledged.

    Its commits are not fsynced: losing a "published" mark in a crash only republishes events,
    which consumers dedupe by idempotency key.
    """

    def __init__(self, path: Path) -> None:
        self._conn = _connect(path, "NORMAL")
        _locked(self._conn.executescript, _SCHEMA)

    def unpublished(self, limit: int) -> list[PendingEvent]:
        rows = self._conn.execute(
            "SELECT seq, kafka_key, payload FROM events WHERE published_at IS NULL ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [PendingEvent(*row) for row in rows]

    def mark_published(self, seqs: list[int]) -> None:
        """Mark a batch from `unpublished()` as acknowledged.

        The batch is every unpublished row up to its highest seq (seqs are assigned and committed
        in order by the one writer), so one range update covers it.
        """
        if not seqs:
            return
        _locked(
            self._conn.execute,
            "UPDATE events SET published_at = ? WHERE published_at IS NULL AND seq <= ?",
            (time.time(), max(seqs)),
        )

    def dead_letter(self, reasons: dict[int, str]) -> None:
        """Copy events the broker will never accept (seq: why) to `dead_letters`, kept past retention.

        The events themselves are then marked published with their batch: their idempotency keys
        stay, so a client's retry is still a duplicate rather than a new event refused again.
        """
        now = time.time()
        _locked(
            self._conn.executemany,
            "INSERT OR IGNORE INTO dead_letters (event_id, kafka_key, kind, payload, created_at, dead_at, reason)"
            " SELECT event_id, kafka_key, kind, payload, created_at, ?, ? FROM events WHERE seq = ?",
            [(now, reason, seq) for seq, reason in reasons.items()],
        )

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """(event_id, kind, reason) of every dead-lettered event, oldest first."""
        return self._conn.execute("SELECT event_id, kind, reason FROM dead_letters ORDER BY dead_at").fetchall()

    def replay_published(self, keep_published: list[int]) -> int:
        """Mark every retained published event unpublished again (the broker lost them)."""
        conn = self._conn
        _locked(conn.execute, "BEGIN IMMEDIATE")
        changed = conn.execute("UPDATE events SET published_at = NULL WHERE published_at IS NOT NULL").rowcount
        for seq in keep_published:
            changed -= conn.execute("UPDATE events SET published_at = ? WHERE seq = ?", (time.time(), seq)).rowcount
        _locked(conn.execute, "COMMIT")
        return changed

    def checkpoint(self) -> None:
        """Copy the WAL back into the database without blocking appends (PASSIVE)."""
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def prune(self, retention_s: float) -> int:
        """Forget published events older than the retention (their idempotency keys go with them)."""
        return _locked(
            self._conn.execute,
            "DELETE FROM events WHERE published_at IS NOT NULL AND published_at < ?",
            (time.time() - retention_s,),
        ).rowcount

    def close(self) -> None:
        self._conn.close()
