"""The feedback path's Prometheus metrics, in a registry owned by one app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from flywheel.metrics import LATENCY_BUCKETS


class FeedbackMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flywheel_feedback_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flywheel_feedback_http_request_latency_seconds", "HTTP latency by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("flywheel_feedback_http_requests_in_flight", "HTTP requests being served.", registry=r)
        self.accepted = Counter(
            "flywheel_feedback_events_accepted", "Feedback events accepted, by kind and transport.",
            ["kind", "transport"], registry=r,
        )  # fmt: skip
        self.duplicates = Counter(
            "flywheel_feedback_events_duplicate", "Retries answered with the event already accepted.", ["kind"],
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "flywheel_feedback_events_rejected", "Feedback events rejected, by kind and reason.", ["kind", "reason"],
            registry=r,
        )  # fmt: skip
        self.thumbs = Counter(
            "flywheel_feedback_thumbs", "Thumbs accepted, by policy version and rating (the roll-out signal).",
            ["policy_version", "rating"], registry=r,
        )  # fmt: skip
        self.comparisons = Counter(
            "flywheel_feedback_comparison_wins", "Comparisons accepted, by the winning choice's policy version.",
            ["policy_version"], registry=r,
        )  # fmt: skip
        self.outbox_depth = Gauge(
            "flywheel_feedback_outbox_depth", "Accepted events not yet acked by Kafka.", registry=r
        )
        self.outbox_commit_latency = Histogram(
            "flywheel_feedback_outbox_commit_seconds",
            "One outbox group commit, fsync included: the disk's share of every 202 (its flush stalls show here).",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.relay_restarts = Counter(
            "flywheel_feedback_relay_restarts", "Times the relay process died and the service started it again.",
            registry=r,
        )  # fmt: skip
        self._relay_stats = None
        r.register(self)  # the relay's counters live in its process; collect() reads them

    def watch_relay(self, stats) -> None:
        self._relay_stats = stats

    def describe(self):
        return []

    def collect(self):
        """The relay process's counters, read from shared memory at scrape time."""
        from feedback.relay import RelayStats

        if self._relay_stats is None:
            return
        values = self._relay_stats.snapshot()
        for name, doc, index in (
            ("flywheel_feedback_events_published", "Events acknowledged by Kafka.", RelayStats.PUBLISHED),
            ("flywheel_feedback_relay_retries", "Relay batches retried.", RelayStats.RETRIES),
            ("flywheel_feedback_events_replayed", "Events re-published because the broker lost them.",
             RelayStats.REPLAYED),
        ):  # fmt: skip
            yield CounterMetricFamily(name, doc, value=values[index])
        dead = CounterMetricFamily(
            "flywheel_events_dead_lettered",
            "Events the broker can never accept (too large, invalid), set aside instead of retried; by producer.",
            labels=["producer"],
        )
        dead.add_metric(["feedback"], values[RelayStats.DEAD_LETTERED])
        yield dead
        buckets, cumulative = [], 0.0
        for i, bound in enumerate((*RelayStats.BUCKETS, float("inf"))):
            cumulative += values[RelayStats.BUCKETS_AT + i]
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "flywheel_feedback_publish_latency_seconds",
            "Time to publish one relay batch (acks=all).",
            buckets=buckets,
            sum_value=values[RelayStats.LATENCY_SUM],
        )
