"""Full-weight versions through the real parts: `flywheel merge`, the broker, tiny-model vLLM reloaded in place.

One replica at canary fraction 1, so a full-weight canary lands on it (canary across replicas).
The swap happens under streaming load: no request fails, none mixes versions, and rolling back
reloads the base weights, which must answer exactly as before (stale weights or KV would not).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flywheel.broker import Broker
from flywheel.channel import FULL_KIND, announce
from flywheel.models import build_tiny_model
from tests.conftest import ADMIN_KEY, ROOT, serving_env, stop_process
from tests.serving.versions import (
    PROMPT,
    corrupt,
    greedy,
    keys_on_both_sides,
    make_lora_version,
    policy,
    start_replica,
    store_of,
    stream_forever,
    wait_policy,
)

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def full_server(tiny_model: Path, module_broker: Broker, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("full")
    env = serving_env(tmp, module_broker.bootstrap, FLYWHEEL_REPLICA_ID="replica-full", FLYWHEEL_CANARY_FRACTION="1.0")
    server = start_replica(tiny_model, tmp, module_broker.bootstrap, env)
    yield server
    stop_process(server.process)


def merge(server, tiny_model: Path, version: str, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "flywheel.cli", "merge", version, "--model", str(tiny_model), *extra]
    return subprocess.run(args, cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=300)


def test_a_merged_version_reloads_in_place_under_load_and_a_rollback_restores_the_base(
    full_server, module_broker, tiny_model
):
    store = store_of(full_server)
    base_answer = greedy(full_server, "base")
    adapter = make_lora_version(tiny_model, store, "lora-1", seed=11)
    announce(module_broker.bootstrap, adapter)
    wait_policy(full_server, lambda s: s["canary_version"] == "lora-1", "lora-1 as canary")

    results: list[dict] = []

    async def run() -> subprocess.CompletedProcess:
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(stream_forever(full_server.url, key, stop, results)) for key in keys_on_both_sides(6)
        ]
        try:
            await asyncio.sleep(2)
            merged = await asyncio.to_thread(merge, full_server, tiny_model, "lora-1")
            await asyncio.to_thread(
                wait_policy, full_server, lambda s: s["engine_weights"] == "lora-1-full", "the merged weights", 120
            )  # fmt: skip
            await asyncio.sleep(3)
            return merged
        finally:
            stop.set()
            await asyncio.gather(*clients)

    merged = asyncio.run(run())
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert "published lora-1-full" in merged.stdout and "announced lora-1-full" in merged.stdout
    manifest = store.manifest("lora-1-full")
    assert manifest.kind == FULL_KIND and manifest.parent == "lora-1"

    failed = [r for r in results if r["error"] or r["finish"] not in ("stop", "length")]
    assert not failed, failed[:3]
    assert all(len(r["versions"]) == 1 for r in results)
    assert {"lora-1-full"} <= set().union(*(r["versions"] for r in results))

    # The engine's own weights serve everyone on this replica: no adapter, and base is not here.
    status = policy(full_server)
    assert [entry["version"] for entry in status["loaded"]] == ["lora-1-full"]
    full_answer = greedy(full_server, "lora-1-full")
    assert full_answer != base_answer
    assert greedy(full_server, "lora-1-full") == full_answer
    pinned_base = httpx.post(f"{full_server.url}/v1/chat/completions", timeout=30,
                             json={"messages": PROMPT, "max_tokens": 4, "policy_version": "base"})  # fmt: skip
    assert pinned_base.status_code == 404 and "lora-1-full" in pinned_base.json()["error"]["message"]

    rolled = httpx.post(f"{full_server.url}/v1/policy/rollback", json={}, headers=ADMIN, timeout=120)
    assert rolled.status_code == 200, rolled.text
    wait_policy(full_server, lambda s: s["engine_weights"] == "base", "the base weights back", 120)
    assert greedy(full_server, "base") == base_answer  # reloaded exactly, no stale KV

    metrics = httpx.get(f"{full_server.url}/metrics", timeout=10).text
    swaps = re.search(r"^flywheel_serving_policy_swap_seconds_count (\S+)", metrics, re.M)
    assert swaps and float(swaps.group(1)) >= 2


def test_full_weights_of_another_model_or_corrupted_are_refused_before_the_engine_sees_them(
    full_server, module_broker, tiny_model, tmp_path
):
    store = store_of(full_server)
    before = greedy(full_server, full_server_weights(full_server))

    other = build_tiny_model(tmp_path / "other", hidden=64)  # same names, other shapes

    def write_other(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
        (tmp / "config.json").write_bytes((other / "config.json").read_bytes())

    wrong = store.publish("other-model", write_other, parent="base", base_model=str(other), kind=FULL_KIND)
    announce(module_broker.bootstrap, wrong)

    make_lora_version(tiny_model, store, "lora-2", seed=12)
    assert merge(full_server, tiny_model, "lora-2", "--no-announce").returncode == 0
    corrupt(store.path("lora-2-full") / "model.safetensors")
    announce(module_broker.bootstrap, store.manifest("lora-2-full"))

    status = wait_policy(full_server, lambda s: {"other-model", "lora-2-full"} <= set(s["refused"]), "both refusals")
    assert "the served model's is" in status["refused"]["other-model"]
    assert "does not match its manifest" in status["refused"]["lora-2-full"]
    assert status["engine_weights"] == full_server_weights(full_server)
    assert greedy(full_server, status["engine_weights"]) == before  # the engine never saw them

    metrics = httpx.get(f"{full_server.url}/metrics", timeout=10).text
    assert re.search(r'^flywheel_serving_policy_refused_total\{reason="shape"\} 1\.0', metrics, re.M), metrics

    refused = merge(full_server, tiny_model, "other-model")
    assert refused.returncode == 1 and "only LoRA versions can be merged" in refused.stderr


def full_server_weights(server) -> str:
    return policy(server)["engine_weights"]
