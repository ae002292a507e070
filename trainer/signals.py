"""What the roll-out and the operator page read from the dataset: thumbs and head-to-head results
per policy version (users, not ratings), and their history in time buckets.
"""

from __future__ import annotations

import sqlite3
from typing import TypedDict

from flywheel.v1 import events_pb2
from trainer.records import EXCLUDED_USERS


class HistoryBucket(TypedDict):
    """Feedback on one version in one time bucket (counts of ratings and of head-to-head results)."""

    version: str
    start: float  # the bucket's start, seconds since the epoch
    up: int
    down: int
    wins: int
    losses: int
    ties: int


class ComparisonTotals(TypedDict):
    total: int
    across_versions: int  # comparisons between choices of different versions (compare mode)


class FeedbackHistory(TypedDict):
    buckets: list[HistoryBucket]
    comparisons: ComparisonTotals


class RolloutSignals:
    """Mixed into DatasetStore: queries on its ratings, comparisons and head_to_head tables."""

    @staticmethod
    def _store_head_to_head(db: sqlite3.Connection, event: events_pb2.FeedbackEvent, created: float) -> None:
        """A comparison across versions (compare mode) as winner/loser rows; the user's latest one stands."""
        versions = list(event.choice_policy_versions)
        ranking = list(event.comparison.ranking)
        if len(set(versions)) < 2 or event.comparison.strength == events_pb2.COMPARISON_STRENGTH_TIE:
            return
        (stored,) = db.execute(
            "SELECT created_at FROM comparisons WHERE completion_id = ? AND user_id = ?",
            (event.completion_id, event.user_id),
        ).fetchone()
        if stored != created:
            return  # an older comparison replayed after a newer one
        db.execute(
            "DELETE FROM head_to_head WHERE completion_id = ? AND user_id = ?", (event.completion_id, event.user_id)
        )
        for place, better in enumerate(ranking):
            for worse in ranking[place + 1 :]:
                if versions[better] != versions[worse]:
                    db.execute(
                        "INSERT OR REPLACE INTO head_to_head VALUES (?, ?, ?, ?, ?)",
                        (event.completion_id, event.user_id, versions[better], versions[worse], created),
                    )

    # The roll-out signals count users, not ratings: one user rating a hundred answers, or sending
    # a hundred comparisons, is one vote, the sign of their net verdict; answers to requests that
    # pinned a version (which anyone may do) are no sample of the roll-out and are left out, and so
    # are raters left out of training (trainer/raters.py): one who answers against everyone else
    # would vote a better canary down.

    def head_to_head(self, version: str, other: str, since: float, anonymous: bool = True) -> tuple[int, int]:
        """(wins, losses) of `version` against `other` since `since`: users on balance for each side."""
        rows = self._query(
            "SELECT COALESCE(SUM(net > 0), 0), COALESCE(SUM(net < 0), 0) FROM ("
            " SELECT h.user_id, SUM(CASE WHEN h.winner = ? THEN 1 ELSE -1 END) AS net FROM head_to_head h"
            " LEFT JOIN completions c USING (completion_id)"
            " WHERE h.created_at >= ? AND ((h.winner = ? AND h.loser = ?) OR (h.winner = ? AND h.loser = ?))"
            " AND COALESCE(c.pinned, 0) = 0 AND (? OR h.user_id NOT LIKE 'anon-%')"
            f" AND h.user_id NOT IN {EXCLUDED_USERS} GROUP BY h.user_id)",
            (version, since, version, other, other, version, anonymous),
        )
        return int(rows[0][0]), int(rows[0][1])

    def thumbs(self, policy_version: str, since: float, anonymous: bool = True) -> tuple[int, int]:
        """(up, down) of `policy_version` since `since`: users whose latest ratings are net up, net down.

        `anonymous=False` leaves out users without an API key (ids `anon-…`), whom anyone can mint.
        """
        rows = self._query(
            "SELECT COALESCE(SUM(net > 0), 0), COALESCE(SUM(net < 0), 0) FROM ("
            " SELECT r.user_id, SUM(r.rating) AS net FROM ratings r LEFT JOIN completions c USING (completion_id)"
            " WHERE r.policy_version = ? AND r.created_at >= ? AND COALESCE(c.pinned, 0) = 0"
            " AND (? OR r.user_id NOT LIKE 'anon-%')"
            f" AND r.user_id NOT IN {EXCLUDED_USERS} GROUP BY r.user_id)",
            (policy_version, since, anonymous),
        )
        return int(rows[0][0]), int(rows[0][1])

    def feedback_history(self, bucket_s: float, since: float = 0.0) -> FeedbackHistory:
        """Thumbs and head-to-head comparisons per policy version and time bucket, for the operator page.

        Thumbs count each user's latest rating of a choice. A comparison counts as a win, loss or
        tie only between choices served by different versions (events list each choice's version);
        one completion's choices usually share a version, so those are only totalled.
        """
        cells: dict[tuple[str, float], dict[str, int]] = {}

        def cell(version: str, created_at: float) -> dict[str, int]:
            start = (created_at // bucket_s) * bucket_s
            return cells.setdefault((version, start), dict.fromkeys(("up", "down", "wins", "losses", "ties"), 0))

        for version, created_at, rating in self._query(
            "SELECT COALESCE(policy_version, ''), created_at, rating FROM ratings WHERE created_at >= ?", (since,)
        ):
            cell(version, created_at)["up" if rating > 0 else "down"] += 1
        total = across = 0
        for payload, created_at in self._query(
            "SELECT e.payload, k.created_at FROM comparisons k JOIN events e ON e.seq = k.seq WHERE k.created_at >= ?",
            (since,),
        ):
            event = events_pb2.FeedbackEvent.FromString(payload)
            ranking, versions = list(event.comparison.ranking), list(event.choice_policy_versions)
            total += 1
            if len(set(versions)) < 2 or any(not 0 <= i < len(versions) for i in ranking):
                continue  # one version (or no per-choice versions): no head-to-head result
            across += 1
            tie = event.comparison.strength == events_pb2.COMPARISON_STRENGTH_TIE
            for rank, better in enumerate(ranking):
                for worse in ranking[rank + 1 :]:
                    winner, loser = versions[better], versions[worse]
                    if winner == loser:
                        continue
                    if tie:
                        cell(winner, created_at)["ties"] += 1
                        cell(loser, created_at)["ties"] += 1
                    else:
                        cell(winner, created_at)["wins"] += 1
                        cell(loser, created_at)["losses"] += 1
        buckets = [{"version": v, "start": start, **counts} for (v, start), counts in sorted(cells.items())]
        return {"buckets": buckets, "comparisons": {"total": total, "across_versions": across}}
