"""Fixtures that let vLLM's own OpenAI-server tests (test_vllm_openai.py) run against Flywheel's server.

vLLM's tests reach their server through a module-scoped `server` (a `RemoteOpenAIServer` from vLLM's
tests/utils.py: `url_root`, `url_for`, `get_client`, `get_async_client`) and an async `client`; here
both stand for one `flywheel serve` on the tiny random model, started as every serving test starts
one (tests/conftest.py's `start_serving` and `serving_env`). Flywheel accepts a request's `model`
and answers as "flywheel" (FLYWHEEL_SERVED_MODEL_NAME), so that is the tests' MODEL_NAME.

The served model's chat template renders tools and the hermes tool parser is set (as in
tests/serving/test_tools.py), so vLLM's tool-call tests meet a server that can honour `tools`. Limits
are vLLM-like where the tests need them: a 2048-token context, max_tokens up to 1024 (Flywheel's
default). A request without max_tokens still gets 16 (FLYWHEEL_DEFAULT_MAX_TOKENS from serving_env)
where vLLM would give it the rest of the context: on a random model that only makes the run slower.

KNOWN_GAPS marks, without touching the copied tests, those expected to fail because Flywheel differs
from OpenAI's API (and vLLM) there: xfail, not strict, so a fixed gap shows as XPASS.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import pytest_asyncio

from tests.conftest import TEST_API_KEY, serving_env, start_serving

MODEL_NAME = "flywheel"  # FLYWHEEL_SERVED_MODEL_NAME's default: what responses and /v1/models name

# The tool-rendering template of tests/serving/test_tools.py (ChatML; the tools in a system turn).
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
You can call these functions:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function | tojson }}</tool_call>\
{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Test (node name) -> why it is expected to fail: a difference from OpenAI's API (and vLLM's). Empty:
# the four the first run found were mended (README.md).
KNOWN_GAPS: dict[str, str] = {}

_model_dirs: dict[str, Path] = {}


class RemoteOpenAIServer:
    """What vLLM's tests use of their RemoteOpenAIServer (tests/utils.py), for a running Flywheel server."""

    DUMMY_API_KEY = TEST_API_KEY  # a configured key: the caller is a known user, as Flywheel's own tests are

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    @property
    def url_root(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url_for(self, *parts: str) -> str:
        return self.url_root + "/" + "/".join(parts)

    def get_client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("api_key", self.DUMMY_API_KEY)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url_for("v1"), **kwargs)

    def get_async_client(self, **kwargs) -> openai.AsyncOpenAI:
        kwargs.setdefault("timeout", 600)
        kwargs.setdefault("api_key", self.DUMMY_API_KEY)
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.url_for("v1"), **kwargs)


def get_vocab_size(model_name: str) -> int:
    """vLLM's tests read `ModelConfig(model=model_name).get_vocab_size()` of a hub model; here, the served one's."""
    config = json.loads((_model_dirs[model_name] / "config.json").read_text())
    return int(config["vocab_size"])


@pytest.fixture(scope="module")
def peer_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that renders tools (tests/serving/test_tools.py's tools_model)."""
    target = tmp_path_factory.mktemp("peer-model") / "tiny-tools"
    shutil.copytree(tiny_model, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TOOLS_TEMPLATE
    config_path.write_text(json.dumps(config))
    (target / "chat_template.jinja").unlink(missing_ok=True)
    return target


@pytest.fixture(scope="module")
def server(peer_model: Path, broker, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("peer-serving")
    env = serving_env(
        tmp,
        broker.bootstrap,
        FLYWHEEL_TOOL_CALL_PARSER="hermes",
        FLYWHEEL_MAX_MODEL_LEN="2048",
        FLYWHEEL_MAX_TOKENS_LIMIT="1024",
        FLYWHEEL_CHAT_RATE_LIMIT_BURST="1000",
    )
    running = start_serving(peer_model, tmp, env)
    _model_dirs[MODEL_NAME] = peer_model
    try:
        yield RemoteOpenAIServer(running.url)
    finally:
        _model_dirs.pop(MODEL_NAME, None)
        running.stop()


# From vLLM's tests/entrypoints/openai/*/test_*.py (each module defines this same fixture).
@pytest_asyncio.fixture
async def client(server):
    async with server.get_async_client() as async_client:
        yield async_client


@pytest.fixture(autouse=True)
def _known_gap(request: pytest.FixtureRequest) -> None:
    reason = KNOWN_GAPS.get(request.node.name)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=f"Flywheel gap: {reason}", strict=False))


# From vLLM's tests/entrypoints/conftest.py (commit 043cd1a182d3f43671d92c7c5b5dc97c4a361a0d; the same
# schema, in the layout of its later ruff-formatted copies). Apache-2.0, Copyright contributors to the vLLM project.
@pytest.fixture
def sample_json_schema():
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "skills": {
                "type": "array",
                "items": {"type": "string", "maxLength": 10},
                "minItems": 3,
            },
            "work_history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "company": {"type": "string"},
                        "duration": {"type": "number"},
                        "position": {"type": "string"},
                    },
                    "required": ["company", "position"],
                },
            },
        },
        "required": ["name", "age", "skills", "work_history"],
    }
