"""Outbox unit tests: a real SQLite file, no relay, no broker."""

from __future__ import annotations

from feedback.outbox import Outbox, OutboxRecord


def test_each_group_commit_reports_its_duration(tmp_path):
    durations: list[float] = []
    outbox = Outbox(tmp_path / "outbox.sqlite", max_pending=100, observe_commit=durations.append)
    try:
        record = OutboxRecord("event-1", "key-1", "completion-1", "thumbs", b"payload")
        appended = outbox.append_many([record]).result(timeout=10)
        again = outbox.append_many([OutboxRecord("event-2", "key-1", "completion-1", "thumbs", b"payload")])
        assert again.result(timeout=10)[0].event_id == "event-1"  # a retry finds the first event
    finally:
        outbox.close()
    assert [a.duplicate for a in appended] == [False]
    assert len(durations) == 2 and all(d > 0 for d in durations)
