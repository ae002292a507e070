"""/metrics scraped and parsed: our counters move with traffic, vLLM's engine metrics are there."""

import httpx
import pytest

from tests.conftest import scrape, value

pytestmark = pytest.mark.engine


def test_metrics_follow_traffic(serving_server):
    url = serving_server.url
    before = scrape(url)
    httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    httpx.post(f"{url}/v1/chat/completions", json={"messages": []})
    after = scrape(url)
    route = "/v1/chat/completions"
    ok = {"route": route, "method": "POST", "status": "200"}
    bad = {"route": route, "method": "POST", "status": "400"}
    assert (
        value(after, "flywheel_serving_requests_total", **ok)
        == value(before, "flywheel_serving_requests_total", **ok) + 1
    )
    assert (
        value(after, "flywheel_serving_requests_total", **bad)
        == value(before, "flywheel_serving_requests_total", **bad) + 1
    )
    tokens = "flywheel_serving_generated_tokens_total"
    assert value(after, tokens, policy_version="base") - value(before, tokens, policy_version="base") == 5
    assert value(after, "flywheel_serving_request_latency_seconds_count", route=route) >= 2
    assert value(after, "flywheel_serving_time_to_first_token_seconds_count", policy_version="base") >= 1
    assert value(after, "flywheel_serving_policy_version_info", version="base", role="stable") == 1
    assert ("flywheel_serving_requests_in_flight", ()) in after
    assert ("flywheel_serving_completion_events_dropped_total", ()) in after
    assert value(after, "flywheel_serving_completion_events_published_total") >= 1
    assert any(name.startswith("vllm:") for name, _ in after)
