"""Roll-out test helpers: real PEFT LoRA versions on the tiny model, published for real, and a replica
started, asked and streamed to as users would."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from flywheel import channel
from flywheel.store import Manifest, ModelStore
from tests.conftest import RunningServer, serving_env, start_serving


def make_lora_version(
    base_model: Path, store: ModelStore, version: str, seed: int, parent: str = "base", extra: dict | None = None,
    top_layers: int = 0,
) -> Manifest:  # fmt: skip
    """A LoRA adapter with random (non-zero) weights, so each version answers differently.

    `top_layers`: on the top N layers only, as the trainer makes them with `ppo.lora_layers`.
    """
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.ppo import PolicyLora, lora_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, lora_config(model, PolicyLora(8, top_layers)))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    return store.publish(
        version, lambda tmp: peft_model.save_pretrained(tmp), parent=parent, base_model=str(base_model),
        kind=channel.ADAPTER_KIND, metrics={"seed": float(seed)}, extra=extra,
    )  # fmt: skip


PROMPT = [{"role": "user", "content": "Name three colours."}]


def keys_on_both_sides(n: int, fraction: float = 0.5) -> list[str]:
    """`n` anonymous API keys, half of whose users the router sends to the canary at `fraction`.

    Random keys would leave every user on one side now and then (1 in 128 for 8 users at one
    half), and a test of canary traffic would then see none.
    """
    from flywheel.auth import resolve_user
    from serving.policy import PolicyRouter

    wanted = {True: n // 2, False: n - n // 2}
    sides: dict[bool, list[str]] = {True: [], False: []}
    for i in itertools.count():
        key = f"user-{i}"
        on_canary = PolicyRouter.bucket(resolve_user(f"Bearer {key}", {}, True)) < fraction
        if len(sides[on_canary]) < wanted[on_canary]:
            sides[on_canary].append(key)
        if len(sides[True]) == wanted[True] and len(sides[False]) == wanted[False]:
            return sides[True] + sides[False]
    raise AssertionError("unreachable")


def start_replica(tiny_model: Path, tmp: Path, bootstrap: str, env: dict[str, str] | None = None) -> RunningServer:
    """A serving replica (tests.conftest.start_serving) with half of its users on the canary."""
    env = env or serving_env(tmp, bootstrap, FLYWHEEL_REPLICA_ID="replica-1", FLYWHEEL_CANARY_FRACTION="0.5")
    return start_serving(tiny_model, tmp, env)


def store_of(server: RunningServer) -> ModelStore:
    return ModelStore(Path(server.env["FLYWHEEL_DATA_DIR"]) / "store")


def policy(server: RunningServer) -> dict:
    return httpx.get(f"{server.url}/v1/policy", timeout=10).json()


def wait_policy(server: RunningServer, check, what: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = policy(server)
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen within {timeout_s} s; status {policy(server)}\n{server.log_tail()}")


def greedy(server: RunningServer, version: str) -> str:
    body = {"messages": PROMPT, "max_tokens": 12, "temperature": 0, "policy_version": version, "ignore_eos": True}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["policy_version"] == version
    return response.json()["choices"][0]["message"]["content"]


async def stream_forever(url: str, key: str, stop: asyncio.Event, results: list[dict]) -> None:
    """One user streaming chats back to back; each response's versions, end and errors are recorded."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    while not stop.is_set():
        record = {"versions": set(), "finish": None, "error": None, "text": ""}
        try:
            stream = await client.chat.completions.create(
                model="flywheel", messages=PROMPT, max_tokens=24, temperature=0.8, stream=True
            )
            async for chunk in stream:
                record["versions"].add(chunk.model_extra.get("policy_version"))
                for choice in chunk.choices:
                    record["text"] += choice.delta.content or ""
                    record["finish"] = choice.finish_reason or record["finish"]
        except Exception as exc:
            record["error"] = repr(exc)
        results.append(record)
    await client.close()


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
