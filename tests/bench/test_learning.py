"""The learning benchmark's arithmetic: serving during rounds against outside them, and the first clear win."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
learning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning)


def test_the_median_is_read_from_cumulative_buckets():
    assert learning.median_from_buckets({0.5: 0, 1.0: 10, 2.0: 20, float("inf"): 20}) == pytest.approx(1.0)
    assert learning.median_from_buckets({1.0: 5, 3.0: 15, float("inf"): 20}) == pytest.approx(2.0)
    assert learning.median_from_buckets({}) is None


def test_serving_during_rounds_is_compared_with_serving_outside_them():
    def sample(t, running, done, fast, slow):  # `fast` requests under 1 s, `slow` ones under 4 s
        return {"t": t, "round_running": running, "done": done,
                "buckets": {1.0: fast, 4.0: fast + slow, float("inf"): fast + slow}}  # fmt: skip

    samples = [
        sample(0, False, 0, 0, 0),
        sample(10, False, 20, 20, 0),  # idle: 2 per second, all under 1 s
        sample(20, True, 25, 20, 5),  # a round starts inside this interval: counted on neither side
        sample(30, True, 35, 20, 15),  # training: 1 per second, all between 1 and 4 s
        sample(40, True, 45, 20, 25),
    ]
    measured = learning.serving_under_training(samples)
    assert measured["idle"]["completions_per_s"] == pytest.approx(2.0)
    assert measured["training"]["completions_per_s"] == pytest.approx(1.0)
    assert measured["throughput_ratio"] == pytest.approx(0.5)
    assert measured["idle"]["median_latency_s"] == pytest.approx(0.5)
    assert measured["training"]["median_latency_s"] == pytest.approx(2.5)
    assert measured["latency_ratio"] == pytest.approx(5.0)


def test_the_first_clearly_better_version_is_the_earliest_published_with_its_interval_above_zero():
    report = {
        "versions": [
            {"version": "base", "answers": 400, "rate": 0.1, "ci_low": 0.07, "ci_high": 0.13, "first_seen_s": 0},
            {"version": "v1", "answers": 40, "rate": 0.2, "ci_low": 0.1, "ci_high": 0.35, "first_seen_s": 600},
            {"version": "v2", "answers": 90, "rate": 0.6, "ci_low": 0.5, "ci_high": 0.7, "first_seen_s": 1200},
            {"version": "v3", "answers": 50, "rate": 0.7, "ci_low": 0.55, "ci_high": 0.8, "first_seen_s": 1500},
        ],
        "versus_first": [
            {"version": "v1", "difference": 0.1, "ci_low": -0.01, "ci_high": 0.25},
            {"version": "v3", "difference": 0.6, "ci_low": 0.45, "ci_high": 0.7},
            {"version": "v2", "difference": 0.5, "ci_low": 0.4, "ci_high": 0.6},
        ],
    }
    publications = [{"version": "v1", "published_min": 9.0}, {"version": "v2", "published_min": 19.0},
                    {"version": "v3", "published_min": 24.0}]  # fmt: skip
    result = learning.summarise("concise", report, [], publications, {})
    first = result["first_clearly_better"]
    assert first["version"] == "v2" and first["published_min"] == 19.0 and first["first_served_min"] == 20.0
    assert first["lift_points"] == pytest.approx(50.0)
    assert result["base"]["satisfaction"] == 0.1
