"""POST /v1/completions through the OpenAI SDK against real vLLM: a text prompt used as given,
recorded as a Completion event the trainer reads with the same prompt tokens serving used."""

from __future__ import annotations

import openai
import pytest
from transformers import AutoTokenizer

from flywheel.settings import TOPIC_COMPLETIONS
from flywheel.v1 import events_pb2
from tests.conftest import TEST_API_KEY, TEST_USER
from tests.kafka_helpers import consume
from trainer.dataset import DatasetStore
from trainer.reward import prompt_ids

pytestmark = pytest.mark.engine
PROMPT = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def client(serving_server):
    return openai.OpenAI(base_url=f"{serving_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


def test_a_text_prompt_is_completed_as_written_and_recorded_for_the_trainer(client, broker, tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    completion = client.completions.create(model="flywheel", prompt=PROMPT, max_tokens=6, n=2, seed=3, logprobs=2)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.usage.prompt_tokens == len(tokenizer.encode(PROMPT)), "no chat template around the prompt"
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        assert choice.text and choice.model_extra["feedback_token"] and choice.finish_reason == "length"
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == 6
        for token, top in zip(choice.logprobs.tokens, choice.logprobs.top_logprobs, strict=True):
            assert len(top) <= 3 and token in top, "the top 2 and the sampled token, as OpenAI gives them"
        offsets = choice.logprobs.text_offset
        assert offsets[0] == 0 and offsets == sorted(offsets)
    assert completion.model_extra["policy_version"] == "base"

    wanted = completion.id.replace("cmpl-", "chatcmpl-", 1)
    events = consume(broker.bootstrap, TOPIC_COMPLETIONS, events_pb2.Completion.FromString,
                     lambda evs: any(e.completion_id == wanted for e in evs))  # fmt: skip
    (event,) = [e for e in events if e.completion_id == wanted]
    assert event.prompt_text == PROMPT and not event.messages and event.user_id == TEST_USER
    assert [c.text for c in event.choices] == [c.text for c in completion.choices]

    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString())])
    ((_, messages),) = store.prompts(10)
    assert prompt_ids(tokenizer, messages) == list(event.prompt_token_ids), "the trainer reads what was served"


def test_streamed_token_id_prompt_is_read_back_with_its_own_special_tokens(client, broker, tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = [tokenizer.bos_token_id, *tokenizer.encode(PROMPT, add_special_tokens=False)]  # a BOS of its own
    chunks = list(client.completions.create(model="flywheel", prompt=ids, max_tokens=5, stream=True, seed=1,
                                            stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    assert any(c.choices and c.choices[0].model_extra.get("feedback_token") for c in chunks)
    assert chunks[-1].usage.prompt_tokens == len(ids) and chunks[-1].usage.completion_tokens == 5

    wanted = chunks[0].id.replace("cmpl-", "chatcmpl-", 1)
    events = consume(broker.bootstrap, TOPIC_COMPLETIONS, events_pb2.Completion.FromString,
                     lambda evs: any(e.completion_id == wanted for e in evs))  # fmt: skip
    (event,) = [e for e in events if e.completion_id == wanted]
    assert list(event.prompt_token_ids) == ids and event.prompt_text.startswith(tokenizer.bos_token)
    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest([(TOPIC_COMPLETIONS, event.SerializeToString())])
    ((_, messages),) = store.prompts(10)
    assert prompt_ids(tokenizer, messages) == ids, "one BOS, as served: none added again"


@pytest.mark.parametrize(("options", "param"), [
    ({"echo": True}, "echo"),
    ({"suffix": "The end."}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [999_999_999]}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"logprobs": 9}, "logprobs"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"stop": ""}, "stop"),
    ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
])  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_naming_the_field(client, options, param):
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model="flywheel", **{"prompt": PROMPT, "max_tokens": 4, **options})
    assert excinfo.value.body["param"].startswith(param), excinfo.value.body
