"""The chat path through the official openai client against a running server (real vLLM)."""

import httpx
import openai
import pytest

from flywheel.tokens import FeedbackToken
from tests.conftest import TEST_API_KEY, TEST_SECRET, TEST_USER

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(serving_server):
    return openai.OpenAI(base_url=f"{serving_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


def test_non_streaming_response_has_openai_fields_and_flywheel_extras(client):
    response = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=8, temperature=0)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.model_extra["policy_version"] == "base"
    claims = FeedbackToken(TEST_SECRET).verify(choice.model_extra["feedback_token"])
    assert (claims.completion_id, claims.choice_index, claims.choice_count) == (response.id, 0, 1)
    assert (claims.user_id, claims.policy_version) == (TEST_USER, "base")


def test_greedy_answers_are_deterministic_and_seeded_sampling_repeats(client):
    first = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=12, temperature=0)
    second = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=12, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content
    seeded = [
        client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_n_two_gives_two_choices_each_with_its_own_token(client):
    response = client.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=10, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in response.choices] == [0, 1]
    tokens = [c.model_extra["feedback_token"] for c in response.choices]
    assert len(set(tokens)) == 2
    signer = FeedbackToken(TEST_SECRET)
    assert [signer.verify(t).choice_index for t in tokens] == [0, 1]
    assert all(signer.verify(t).choice_count == 2 for t in tokens)


def test_streaming_with_n_two_assembles_both_choices_and_usage(client):
    stream = client.chat.completions.create(
        model="flywheel",
        messages=MESSAGES,
        max_tokens=10,
        n=2,
        temperature=0.8,
        seed=11,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finish, tokens, ids, usage = {0: "", 1: ""}, {}, {}, set(), None
    for chunk in stream:
        ids.add(chunk.id)
        assert chunk.model_extra["policy_version"] == "base"
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
            if choice.model_extra.get("feedback_token"):
                tokens[choice.index] = choice.model_extra["feedback_token"]
    assert len(ids) == 1
    assert all(texts.values())
    assert set(finish) == {0, 1}
    assert set(tokens) == {0, 1}
    assert usage is not None and usage.completion_tokens > 0
    # The streamed answer equals the non-streamed one for the same seed.
    same = client.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=10, n=2, temperature=0.8, seed=11
    )
    assert [c.message.content for c in same.choices] == [texts[0], texts[1]]


def test_raw_sse_ends_with_done(serving_server):
    body = {"messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{serving_server.url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_logprobs_and_top_logprobs(client):
    response = client.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
    assert "".join(e.token for e in content) == response.choices[0].message.content


def test_stop_sequence_ends_the_answer(client):
    free = client.chat.completions.create(model="flywheel", messages=MESSAGES, max_tokens=16, temperature=0)
    text = free.choices[0].message.content
    stop = text.strip().split()[1] if len(text.strip().split()) > 1 else text.strip()[:2]
    stopped = client.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=16, temperature=0, stop=[stop]
    )
    assert stop not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    assert text.startswith(stopped.choices[0].message.content)


def test_models_health_and_readiness(serving_server, client):
    assert [m.id for m in client.models.list().data] == ["flywheel"]
    assert httpx.get(f"{serving_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{serving_server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["policy_version"] == "base"


def test_pinning_an_unknown_policy_version_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(
            model="flywheel", messages=MESSAGES, max_tokens=4, extra_body={"policy_version": "v-nope"}
        )
    assert excinfo.value.body["code"] == "policy_version_not_found"
    pinned = client.chat.completions.create(
        model="flywheel", messages=MESSAGES, max_tokens=4, extra_body={"policy_version": "base"}
    )
    assert pinned.model_extra["policy_version"] == "base"
