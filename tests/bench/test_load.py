"""The load and fault benchmarks' arithmetic: what was lost or stored twice, latency per window, memory growth."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.load import latency_windows, memory_growth
from bench.traffic import feedback_counts


def test_an_accepted_event_missing_from_the_store_is_lost_and_a_key_stored_twice_is_a_duplicate():
    rows = [("k1", "e1"), ("k2", "e2"), ("k2", "e9"), ("k4", "e4")]  # e3 never arrived; k2 twice; e4 unanswered
    counts = feedback_counts(Counter(sent=4, accepted=3), {"e1", "e2", "e3"}, rows)
    assert counts == {"sent": 4, "accepted": 3, "stored": 2, "duplicates": 1, "stored_unanswered": 2, "lost": 1,
                      "lost_ids": ["e3"]}


def test_latency_is_split_into_windows_with_the_trainers_share_in_a_round():
    times = [(0.5, 0.1), (1.5, 0.2), (9.5, 0.4), (9.9, 0.6)]
    windows = latency_windows(times, 0.0, 10.0, [(1.0, False), (9.0, True), (9.5, False)])
    assert [w["n"] for w in windows] == [2, 0, 0, 0, 2]
    assert windows[0]["p50_ms"] == pytest.approx(100.0) and windows[4]["p99_ms"] == pytest.approx(600.0)
    assert windows[0]["in_round"] == 0.0 and windows[4]["in_round"] == 0.5 and windows[2]["in_round"] is None


def test_memory_growth_is_the_least_squares_slope_per_minute():
    samples = [(t, {"serving": 100 + t / 6, "feedback": 50.0}) for t in range(0, 300, 30)]
    growth = memory_growth(samples)
    assert growth["serving"]["mib_per_min"] == pytest.approx(10.0)
    assert growth["feedback"] == {"start_mib": 50.0, "end_mib": 50.0, "mib_per_min": 0.0}
    assert growth["serving"]["end_mib"] > growth["serving"]["start_mib"]
