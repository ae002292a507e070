"""The chat path's Prometheus metrics, in a registry owned by one app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flywheel.metrics import LATENCY_BUCKETS


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flywheel_serving_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "flywheel_serving_request_latency_seconds",
            "HTTP request latency (to the last byte) by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("flywheel_serving_requests_in_flight", "HTTP requests being served.", registry=r)
        self.ttft = Histogram(
            "flywheel_serving_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first generated token.",
            ["policy_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "flywheel_serving_generated_tokens", "Tokens generated, by policy version.", ["policy_version"], registry=r
        )
        self.prompt_tokens = Counter(
            "flywheel_serving_prompt_tokens",
            "Prompt tokens processed, by policy version.",
            ["policy_version"],
            registry=r,
        )
        self.chat_completions = Counter(
            "flywheel_serving_chat_completions",
            "Finished chat completions by policy version and finish state.",
            ["policy_version", "outcome"],
            registry=r,
        )
        self.policy_info = Gauge(
            "flywheel_serving_policy_version_info",
            "1 for each policy version this replica serves, labelled by its role.",
            ["version", "role"],
            registry=r,
        )
        self.events_published = Counter(
            "flywheel_serving_completion_events_published", "Completion events acknowledged by Kafka.", registry=r
        )
        self.events_dropped = Counter(
            "flywheel_serving_completion_events_dropped",
            "Completion events dropped because the buffer was full.",
            registry=r,
        )
        self.event_buffer = Gauge(
            "flywheel_serving_completion_event_buffer", "Completion events waiting for Kafka.", registry=r
        )
        self.publish_errors = Counter(
            "flywheel_serving_completion_event_publish_errors", "Failed attempts to publish to Kafka.", registry=r
        )
        self.events_dead_lettered = Counter(
            "flywheel_events_dead_lettered",
            "Events the broker can never accept (too large, invalid), set aside instead of retried; by producer.",
            ["producer"],
            registry=r,
        )
        self.policy_records_skipped = Counter(
            "flywheel_serving_policy_records_skipped",
            "Records on the policy topic this replica could not use (malformed, or handling them failed).",
            registry=r,
        )
        self.swap_seconds = Histogram(
            "flywheel_serving_policy_swap_seconds",
            "Time from a PolicyPublished event to the version being live (verify, load, warm up).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.versions_loaded = Gauge(
            "flywheel_serving_policy_versions_loaded", "Policy versions loaded in the engine.", registry=r
        )
        self.canary_fraction = Gauge(
            "flywheel_serving_canary_fraction", "Share of users routed to the canary version.", registry=r
        )
        self.refused_versions = Counter(
            "flywheel_serving_policy_refused", "Published versions refused, by reason.", ["reason"], registry=r
        )
        self.swap_failures = Counter(
            "flywheel_serving_policy_swap_failures", "Versions that failed to load or warm up.", registry=r
        )
        self.rollout_decisions = Counter(
            "flywheel_serving_rollout_decisions",
            "Roll-out decisions folded in, by action (promote, rollback, refuse, canary, set_canary_fraction) and"
            " who decided (controller, operator or a replica id).",
            ["outcome", "source"],
            registry=r,
        )
