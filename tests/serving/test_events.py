"""Completion events reach the real broker, decodable, one per finished response."""

import httpx
import pytest

from flywheel.settings import TOPIC_COMPLETIONS
from flywheel.v1 import events_pb2
from tests.conftest import TEST_API_KEY, TEST_USER
from tests.kafka_helpers import consume

pytestmark = pytest.mark.engine


def _decode(raw: bytes) -> events_pb2.Completion:
    return events_pb2.Completion.FromString(raw)


def test_each_response_publishes_one_completion_event(serving_server, broker):
    url = f"{serving_server.url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    plain = httpx.post(
        url,
        json={
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
            "max_tokens": 6,
            "n": 2,
            "temperature": 0.7,
            "seed": 5,
            "logprobs": True,
        },
        headers=headers,
        timeout=60,
    ).json()
    with httpx.stream(
        "POST",
        url,
        json={"messages": [{"role": "user", "content": "stream me"}], "max_tokens": 5, "stream": True},
        timeout=60,
    ) as response:
        streamed_id = None
        for line in response.iter_lines():
            if line.startswith("data: {") and streamed_id is None:
                streamed_id = httpx.Response(200, content=line[6:]).json()["id"]

    wanted = {plain["id"], streamed_id}
    events = consume(broker.bootstrap, TOPIC_COMPLETIONS, _decode, lambda evs: wanted <= {e.completion_id for e in evs})
    by_id = {}
    for event in events:
        by_id.setdefault(event.completion_id, []).append(event)
    assert all(len(by_id[i]) == 1 for i in wanted)

    event = by_id[plain["id"]][0]
    assert event.event_id and event.schema_version == 1 and event.created_at.seconds > 0
    assert event.user_id == TEST_USER
    assert event.policy_version == "base"
    assert [(m.role, m.content) for m in event.messages] == [("system", "Be brief."), ("user", "hello")]
    assert [c.text for c in event.choices] == [c["message"]["content"] for c in plain["choices"]]
    assert all(len(c.token_ids) == len(c.token_logprobs) > 0 for c in event.choices)
    assert event.sampling.n == 2 and event.sampling.seed == 5 and event.sampling.max_tokens == 6
    assert event.sampling.temperature == pytest.approx(0.7)
    assert event.prompt_tokens == len(event.prompt_token_ids) == plain["usage"]["prompt_tokens"]

    streamed = by_id[streamed_id][0]
    assert streamed.stream
    assert streamed.user_id.startswith("anon-")
    assert streamed.choices[0].finish_reason in {"stop", "length"}
