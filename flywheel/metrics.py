"""Prometheus helpers: each app owns a registry; /metrics may add the process-global one.

A registry per app keeps tests that build several apps free of duplicate-metric errors;
vLLM registers its `vllm:*` collectors in the global registry, which serving exposes too.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def render(registry: CollectorRegistry, include_global: bool = False) -> tuple[bytes, str]:
    """The text exposition of `registry` (plus the global registry), and its content type."""
    body = generate_latest(registry)
    if include_global:
        body += generate_latest(REGISTRY)
    return body, CONTENT_TYPE_LATEST
