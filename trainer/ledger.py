"""The trainer's ledger in its dataset: rounds (begun, finished, abandoned by a kill), the ingestor's
Kafka positions, and small named state (the reward model in use, announced versions, the candidate).
"""

from __future__ import annotations

import json
import time

from trainer.records import RoundRecord


class RoundLedger:
    """Mixed into DatasetStore: its tables `rounds`, `positions` and `state`, on the store's connection."""

    def begin_round(self, feedback_seq: int) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO rounds (started_at, outcome, feedback_seq) VALUES (?, 'running', ?)",
                (time.time(), feedback_seq),
            )
            return cursor.lastrowid

    def finish_round(self, round_id: int, outcome: str, reason: str, version: str, metrics: dict[str, float]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE rounds SET finished_at=?, outcome=?, reason=?, version=?, metrics=? WHERE round=?",
                (time.time(), outcome, reason, version, json.dumps(metrics), round_id),
            )

    def abandon_running_rounds(self) -> int:
        """Mark rounds left 'running' by a killed trainer as failed; return how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE rounds SET outcome='failed', reason='the trainer stopped during the round',"
                " finished_at=? WHERE outcome='running'",
                (time.time(),),
            )
            return cursor.rowcount

    def rounds(self, limit: int = 20) -> list[RoundRecord]:
        rows = self._query(
            "SELECT round, started_at, finished_at, outcome, reason, version, feedback_seq, metrics"
            " FROM rounds ORDER BY round DESC LIMIT ?",
            (limit,),
        )
        return [RoundRecord(*row[:7], json.loads(row[7])) for row in rows]

    def last_round_seq(self, outcomes: tuple[str, ...] = ("published", "gate_failed", "skipped")) -> int:
        """feedback_seq of the newest round that ended with one of `outcomes` (0 when none).

        Rounds a killed trainer left behind are not among the defaults, so their feedback still
        counts as new and starts a round again after a restart.
        """
        placeholders = ",".join("?" * len(outcomes))
        rows = self._query(f"SELECT MAX(feedback_seq) FROM rounds WHERE outcome IN ({placeholders})", outcomes)
        return rows[0][0] or 0

    def positions(self) -> dict[tuple[str, int], tuple[int, str]]:
        rows = self._query("SELECT topic, partition, next_offset, last_digest FROM positions")
        return {(topic, partition): (offset, digest) for topic, partition, offset, digest in rows}

    def forget_position(self, topic: str, partition: int) -> None:
        """The partition's log is a new one: read it from its start, and do not look for the old record again."""
        with self._transaction() as db:
            db.execute("DELETE FROM positions WHERE topic = ? AND partition = ?", (topic, partition))

    def get_state(self, key: str, default: str = "") -> str:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_state(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))
