"""Hot-swap through the real parts: tiny-model vLLM, the broker, real LoRA versions in a model store.

Versions are published as the trainer publishes them (store, then PolicyPublished on Kafka); the
server must pick each one up under streaming load with no failed or truncated request, serve
exactly what that version produces, refuse broken versions, and come back on the same versions
after a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flywheel.broker import Broker
from flywheel.channel import ADAPTER_KIND, announce
from tests.conftest import (
    ADMIN_KEY,
    RunningServer,
    free_port,
    stop_process,
)
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
def swap_server(tiny_model: Path, module_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    server = start_replica(tiny_model, tmp_path_factory.mktemp("swap"), module_broker.bootstrap)
    yield server
    stop_process(server.process)


def test_ten_versions_swap_in_under_streaming_load_with_no_failed_request(swap_server, module_broker, tiny_model):
    store = store_of(swap_server)
    # every other version has LoRA on the top layer only, as the trainer makes them with ppo.lora_layers
    manifests = [make_lora_version(tiny_model, store, f"v{i:02d}", seed=i, top_layers=i % 2) for i in range(1, 11)]
    under_load: dict[str, str] = {}
    results: list[dict] = []

    async def run() -> None:
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(stream_forever(swap_server.url, key, stop, results)) for key in keys_on_both_sides(8)
        ]
        try:
            await asyncio.sleep(2)
            for manifest in manifests:
                await asyncio.to_thread(announce, module_broker.bootstrap, manifest)
                await asyncio.to_thread(
                    wait_policy, swap_server, lambda s, v=manifest.version: s["canary_version"] == v,
                    f"{manifest.version} as canary",
                )  # fmt: skip
                under_load[manifest.version] = await asyncio.to_thread(greedy, swap_server, manifest.version)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    asyncio.run(run())

    failed = [r for r in results if r["error"] or r["finish"] not in ("stop", "length")]
    assert not failed, failed[:3]
    assert len(results) >= 40, f"only {len(results)} requests ran during the swaps"
    # Each response came from one version from start to end, and users reached the canaries too.
    assert all(len(r["versions"]) == 1 for r in results)
    served = set().union(*(r["versions"] for r in results))
    assert len(served & set(under_load)) >= 3, served

    # Greedy answers under load equal that version's answer when the server is idle, and the
    # versions really differ (a swap that kept the old weights would fail here).
    status = policy(swap_server)
    assert len(status["loaded"]) <= 5  # base + at most max_loaded_versions adapters
    for version, answer in under_load.items():
        if version not in {entry["version"] for entry in policy(swap_server)["loaded"]}:
            loaded = httpx.post(
                f"{swap_server.url}/v1/policy/load", json={"version": version}, headers=ADMIN, timeout=60
            )
            assert loaded.status_code == 200, loaded.text
        assert greedy(swap_server, version) == answer, version
    assert len(set(under_load.values()) | {greedy(swap_server, "base")}) >= 8

    metrics = httpx.get(f"{swap_server.url}/metrics", timeout=10).text
    swaps = re.search(r"^flywheel_serving_policy_swap_seconds_count (\S+)", metrics, re.M)
    assert swaps and float(swaps.group(1)) >= 10


def test_corrupted_and_truncated_versions_are_refused_and_the_old_ones_keep_serving(
    swap_server, module_broker, tiny_model
):
    store = store_of(swap_server)
    good = make_lora_version(tiny_model, store, "good-1", seed=101)
    announce(module_broker.bootstrap, good)
    wait_policy(swap_server, lambda s: s["canary_version"] == "good-1", "good-1 as canary")

    corrupted = make_lora_version(tiny_model, store, "corrupted-1", seed=102)
    corrupt(store.path("corrupted-1") / "adapter_model.safetensors")
    announce(module_broker.bootstrap, corrupted)

    def write_truncated(tmp: Path) -> None:  # the manifest matches, the weights file is cut short
        source = store.path("good-1")
        (tmp / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
        weights = (source / "adapter_model.safetensors").read_bytes()
        (tmp / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])

    truncated = store.publish(
        "truncated-1", write_truncated, parent="base", base_model=str(tiny_model), kind=ADAPTER_KIND
    )
    announce(module_broker.bootstrap, truncated)

    status = wait_policy(swap_server, lambda s: {"corrupted-1", "truncated-1"} <= set(s["refused"]), "both refusals")
    assert "does not match its manifest" in status["refused"]["corrupted-1"]
    assert "weights unreadable" in status["refused"]["truncated-1"]
    assert status["canary_version"] == "good-1"
    assert {"corrupted-1", "truncated-1"}.isdisjoint(entry["version"] for entry in status["loaded"])
    assert greedy(swap_server, "good-1")
    pinned = httpx.post(f"{swap_server.url}/v1/chat/completions", timeout=30,
                        json={"messages": PROMPT, "max_tokens": 4, "policy_version": "corrupted-1"})  # fmt: skip
    assert pinned.status_code == 404
    metrics = httpx.get(f"{swap_server.url}/metrics", timeout=10).text
    assert 'flywheel_serving_policy_refused_total{reason="checksum"} 1.0' in metrics
    assert 'flywheel_serving_policy_refused_total{reason="weights"} 1.0' in metrics


@pytest.mark.disruptive
def test_a_replica_restarted_mid_rollout_comes_back_on_the_same_versions(tiny_model, tmp_path):
    broker = Broker(port=free_port()).start()  # its own: this replica refuses the other tests' versions
    server = start_replica(tiny_model, tmp_path, broker.bootstrap)
    try:
        store = store_of(server)
        first, second = (make_lora_version(tiny_model, store, f"r-{i}", seed=200 + i) for i in (1, 2))
        announce(broker.bootstrap, first)
        wait_policy(server, lambda s: s["canary_version"] == "r-1", "r-1 as canary")
        promoted = httpx.post(f"{server.url}/v1/policy/promote", json={"reason": "test"}, headers=ADMIN, timeout=30)
        assert promoted.status_code == 200, promoted.text
        announce(broker.bootstrap, second)
        wait_policy(server, lambda s: s["canary_version"] == "r-2", "r-2 as canary")
        fraction = httpx.post(f"{server.url}/v1/policy/canary", json={"fraction": 0.3}, headers=ADMIN, timeout=30)
        assert fraction.status_code == 200, fraction.text
        before = policy(server)
        assert (before["stable_version"], before["canary_version"], before["canary_fraction"]) == ("r-1", "r-2", 0.3)
        answers = {v: greedy(server, v) for v in ("r-1", "r-2")}
    except BaseException:
        broker.stop()
        raise
    finally:
        stop_process(server.process)  # SIGTERM, then SIGKILL of the whole group
    try:
        restarted = start_replica(tiny_model, tmp_path, broker.bootstrap, env=server.env)
        try:
            after = policy(restarted)
            assert (after["stable_version"], after["canary_version"], after["canary_fraction"]) == ("r-1", "r-2", 0.3)
            assert {v: greedy(restarted, v) for v in answers} == answers
        finally:
            stop_process(restarted.process)
    finally:
        broker.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], capture_output=True, text=True, timeout=120)


def test_the_cli_drives_the_rollout_through_policy_service(swap_server):
    target = ("--serving", f"127.0.0.1:{swap_server.env['FLYWHEEL_GRPC_PORT']}", "--admin-key", ADMIN_KEY)
    listed = run_cli("versions", *target)
    assert listed.returncode == 0, listed.stderr
    states = {entry["version"]: entry["state"] for entry in json.loads(listed.stdout)["versions"]}
    assert states["base"] == "stable" and "canary" in states.values()

    changed = run_cli("canary", "0.25", *target)
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["status"]["canaryFraction"] == 0.25
    assert policy(swap_server)["canary_fraction"] == 0.25

    bad_fraction = run_cli("canary", "1.5", *target)
    assert bad_fraction.returncode == 1 and "between 0 and 1" in bad_fraction.stderr
    wrong_key = run_cli("versions", "--serving", target[1], "--admin-key", "not-the-key")
    assert wrong_key.returncode == 1 and "admin key" in wrong_key.stderr
    assert "Traceback" not in wrong_key.stderr + bad_fraction.stderr
    refused = httpx.post(f"{swap_server.url}/v1/policy/canary", json={"fraction": 0.9}, timeout=10)
    assert refused.status_code == 401
    invalid = httpx.post(f"{swap_server.url}/v1/policy/canary", json={"fraction": 2}, headers=ADMIN, timeout=10)
    assert invalid.status_code == 400
