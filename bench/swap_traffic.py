"""bench/swap.py's versions and traffic: random LoRA versions announced as the trainer does, a probe
that notes when each version first answers, and streaming clients that count what they get.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

LORA_RANK = 16
LORA_ALPHA = 32
LORA_B_STD = 0.03  # small, but enough to change greedy answers of the 135M model (checked by hand)
PROBE_KEY, LOAD_KEY = "bench-probe", "bench-load"
PROMPT = [{"role": "user", "content": "Name three colours."}]
LOAD_PROMPTS = [
    "Explain photosynthesis in simple terms.",
    "Give me three tips for better sleep.",
    "How does a refrigerator keep food cold?",
    "Describe the water cycle.",
    "What should I pack for a weekend hiking trip?",
    "How do vaccines work?",
    "What causes the seasons on Earth?",
    "How do bees make honey?",
]
LOAD_MAX_TOKENS = 64


# -- versions and their announcement


def make_versions(model: str, store, names: list[str]) -> list:
    """Rank-16 LoRA adapters (PEFT, all linear layers) with small random lora_B: each answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from flywheel.channel import ADAPTER_KIND

    torch.set_num_threads(1)  # leave the other core to the server starting beside us
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    manifests = []
    for seed, name in enumerate(names, start=1):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in lora_b:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * LORA_B_STD)
        write = peft_model.save_pretrained
        manifest = store.publish(
            name, write, parent="base", base_model=model, kind=ADAPTER_KIND, metrics={"seed": seed}
        )
        manifests.append(manifest)
    return manifests


class Announcer:
    """Sends PolicyPublished as the trainer does (acks=all) on one producer kept open; returns created_at."""

    def __init__(self, bootstrap: str, store) -> None:
        from flywheel.channel import PolicySender

        self.store = store
        self.sender = PolicySender(bootstrap)
        self.sender.connect()  # metadata now, not inside the first timed swap

    def announce(self, manifest) -> float:
        event = self.sender.announce(manifest)
        return event.published.created_at.ToNanoseconds() / 1e9

    def close(self) -> None:
        self.sender.close()


# -- clients


@dataclass
class Probe:
    """One client asking back to back (1 token, non-streaming) and noting when each version first answers."""

    url: str
    first_seen: dict[str, tuple[float, float]] = field(default_factory=dict)  # version: (sent, answered)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        body = {"messages": PROMPT, "max_tokens": 1, "temperature": 0}
        headers = {"Authorization": f"Bearer {PROBE_KEY}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60) as client:
            while not stop.is_set():
                sent = time.time()
                try:
                    response = await client.post("/v1/chat/completions", json=body)
                    response.raise_for_status()
                    version = response.json()["policy_version"]
                except Exception as exc:
                    self.failures.append(repr(exc))
                    await asyncio.sleep(0.1)
                    continue
                answered = time.time()
                self.latencies.append(answered - sent)
                self.first_seen.setdefault(version, (sent, answered))

    async def wait_for(self, version: str, timeout_s: float) -> tuple[float, float] | None:
        deadline = time.monotonic() + timeout_s
        while version not in self.first_seen and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self.first_seen.get(version)


@dataclass
class Stream:
    started: float
    chunk_times: list[float] = field(default_factory=list)
    ended: float = 0.0
    tokens: int = 0
    versions: set[str] = field(default_factory=set)
    finish: str | None = None
    error: str | None = None

    def tokens_between(self, start: float, end: float) -> float:
        """Tokens that arrived in [start, end); each chunk counts for an equal share of the usage."""
        if not self.chunk_times:
            return 0.0
        share = self.tokens / len(self.chunk_times)
        return share * sum(1 for t in self.chunk_times if start <= t < end)


async def stream_forever(url: str, index: int, stop: asyncio.Event, streams: list[Stream]) -> None:
    """One user streaming chats back to back (openai client); each stream's chunks, end and errors are kept."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key=f"{LOAD_KEY}-{index}", max_retries=0, timeout=120)
    turn = index
    while not stop.is_set():
        record = Stream(started=time.time())
        streams.append(record)
        try:
            stream = await client.chat.completions.create(
                model="flywheel", messages=[{"role": "user", "content": LOAD_PROMPTS[turn % len(LOAD_PROMPTS)]}],
                max_tokens=LOAD_MAX_TOKENS, temperature=0.8, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            async for chunk in stream:
                record.versions.add(chunk.model_extra.get("policy_version"))
                if chunk.usage is not None:
                    record.tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    record.chunk_times.append(time.time())
                    record.finish = choice.finish_reason or record.finish
        except Exception as exc:
            record.error = repr(exc)
        record.ended = time.time()
        turn += len(LOAD_PROMPTS) + 1
    await client.close()
