"""A broker outage never fails a chat request; buffered Completion events arrive afterwards."""

import httpx
import pytest

from flywheel.settings import TOPIC_COMPLETIONS
from flywheel.v1 import events_pb2
from tests.conftest import scrape, value
from tests.kafka_helpers import consume

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]


def test_chat_survives_broker_outage_and_events_are_delivered_later(serving_server, broker):
    url = f"{serving_server.url}/v1/chat/completions"
    broker.kill()
    ids = []
    for i in range(5):
        response = httpx.post(
            url, json={"messages": [{"role": "user", "content": f"outage {i}"}], "max_tokens": 4}, timeout=60
        )
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    assert value(scrape(serving_server.url), "flywheel_serving_completion_event_buffer") >= 5

    broker.start()  # same port; the in-memory broker lost everything, so only new events count
    events = consume(
        broker.bootstrap,
        TOPIC_COMPLETIONS,
        events_pb2.Completion.FromString,
        lambda evs: set(ids) <= {e.completion_id for e in evs},
        timeout_s=90,
    )
    assert [e.completion_id for e in events if e.completion_id in ids] == ids  # in order, once each
    after = scrape(serving_server.url)
    assert value(after, "flywheel_serving_completion_events_dropped_total") == 0
    assert value(after, "flywheel_serving_completion_event_publish_errors_total") >= 1
