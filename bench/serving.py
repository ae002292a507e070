"""Serving throughput: the HTTP API vs vLLM's own OpenAI server vs vLLM offline vs HF transformers, in one run (JSON).

The same 32 chat prompts, 64 new tokens each (end-of-sequence ignored, so every path does the
same work), greedy: (a) our HTTP API with 16 concurrent clients, (b) vLLM's own OpenAI server
(`vllm.entrypoints.openai.api_server`) with the same engine settings and the same client, (c) vLLM's
offline `LLM.generate` with the server's engine configuration, (d) HF `generate`, batched, bf16.
Each path runs in its own process, one after another, so they do not share the 2 cores.

    python bench/serving.py [--model DIR] [--out FILE] [--dtypes bfloat16,float32]

`--dtypes` adds the offline engine once per number format (FLYWHEEL_ENGINE_DTYPE), side by side:
on a CPU without native bfloat16 the engine's `auto` takes float32 (serving/engine.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Give me three tips for better sleep.",
    "Write a haiku about autumn leaves.",
    "How does a refrigerator keep food cold?",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly robot.",
    "Why is the sky blue?",
    "How do I make a cup of green tea?",
    "What are prime numbers?",
    "Describe the water cycle.",
    "What should I pack for a weekend hiking trip?",
    "Summarise the plot of Romeo and Juliet.",
    "How can I improve my handwriting?",
    "What is a black hole?",
    "Give me a simple recipe for pancakes.",
    "What causes the seasons on Earth?",
    "How do vaccines work?",
    "What is the Pythagorean theorem?",
    "Write a short poem about the ocean.",
    "What are the benefits of regular exercise?",
    "Explain what a computer program is.",
    "How do bees make honey?",
    "What is the tallest mountain in the world?",
    "How do I start learning to play the guitar?",
    "What is gravity?",
    "Give me an idea for a birthday party theme.",
    "How do plants grow from seeds?",
    "What is the difference between a virus and a bacterium?",
    "Why do we have leap years?",
    "How can I save money on groceries?",
    "What is the speed of light?",
]
NEW_TOKENS = 64
CONCURRENCY = 16


def chat_token_ids(model: str) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def phase_offline(model: str) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from flywheel.settings import ServingSettings
    from serving.engine import engine_kwargs, set_engine_environment

    settings = ServingSettings()
    set_engine_environment(settings)
    kwargs = engine_kwargs(settings, model)
    kwargs.pop("served_model_name")
    llm = LLM(**kwargs)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in chat_token_ids(model)]
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "config": f"server's (eager, LoRA on, {kwargs['dtype']})",
    }


def phase_hf(model: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in PROMPTS
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = {"do_sample": False, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    with torch.inference_mode():
        lm.generate(**tokenizer(texts[:2], return_tensors="pt", padding=True), max_new_tokens=4)  # warm-up
        started = time.perf_counter()
        out = lm.generate(**batch, **kwargs, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        elapsed = time.perf_counter() - started
    tokens = int((out.shape[1] - batch.input_ids.shape[1]) * out.shape[0])
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "config": "bf16, batch 32"}


async def _http_load(url: str) -> dict:
    import httpx

    semaphore = asyncio.Semaphore(CONCURRENCY)
    ttfts: list[float] = []

    async def one(client: httpx.AsyncClient, prompt: str) -> int:
        body = {
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": NEW_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with semaphore:
            started = time.perf_counter()
            first_token_at = None
            tokens = 0
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    elif first_token_at is None and chunk["choices"]:
                        first_token_at = time.perf_counter()
                        ttfts.append(first_token_at - started)
            return tokens

    async with httpx.AsyncClient(timeout=600) as client:
        await one(client, PROMPTS[0])  # warm-up
        ttfts.clear()
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, p) for p in PROMPTS))
        elapsed = time.perf_counter() - started
    tokens = sum(counts)
    ttfts.sort()
    return {
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ttft_p50_s": ttfts[len(ttfts) // 2],
        "config": f"{CONCURRENCY} concurrent streaming clients",
    }


@contextlib.contextmanager
def serving_process(
    model: str, port: int, log_name: str, env: dict[str, str] | None = None, cores: str = ""
) -> Iterator[str]:
    """`flywheel serve` alone (no broker) on `port`, its log in .flywheel/LOG_NAME; yields its URL, stops its group.
    `cores` (a taskset list) pins the whole process tree, front end and engine alike."""
    work = ROOT / ".flywheel"
    env = {**os.environ, **(env or {}), "FLYWHEEL_KAFKA_BOOTSTRAP": "127.0.0.1:1", "FLYWHEEL_DATA_DIR": str(work)}
    args = [sys.executable, "-m", "flywheel.cli", "serve", "--model", model, "--port", str(port)]
    args = ["taskset", "-c", cores, *args] if cores else args
    with server_process(args, port, log_name, "/readyz", env) as url:
        yield url


@contextlib.contextmanager
def server_process(args: list[str], port: int, log_name: str, ready_path: str, env: dict[str, str]) -> Iterator[str]:
    """The server `args` started in its own process group, its log in .flywheel/LOG_NAME; yields its URL once
    `ready_path` answers, then stops the group."""
    from flywheel.supervisor import wait_http_ready

    with open(ROOT / ".flywheel" / log_name, "wb") as log:
        server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ready(f"{url}{ready_path}", server, timeout_s=600)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def phase_http(model: str) -> dict:
    with serving_process(model, 18765, "bench-serving.log") as url:
        return asyncio.run(_http_load(url))


def vllm_server_flags(kwargs: dict) -> list[str]:
    """engine_kwargs as the command line of vLLM's own OpenAI server (the same engine configuration)."""
    flags = []
    for name, value in kwargs.items():
        flag = "--" + name.replace("_", "-")
        if name == "model":
            continue
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif name == "structured_outputs_config":
            config = {"backend": value.backend, "disable_any_whitespace": value.disable_any_whitespace}
            flags += [flag, json.dumps(config)]
        else:
            flags += [flag, str(value)]
    return flags


def phase_vllm_http(model: str) -> dict:
    """vLLM's own OpenAI server (`vllm.entrypoints.openai.api_server`), Flywheel's engine settings, our client."""
    from flywheel.settings import ServingSettings
    from serving.engine import engine_kwargs, set_engine_environment

    settings = ServingSettings()
    set_engine_environment(settings)
    port = 18767
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
            *vllm_server_flags(engine_kwargs(settings, model))]  # fmt: skip
    with server_process(args, port, "bench-vllm-server.log", "/health", dict(os.environ)) as url:
        result = asyncio.run(_http_load(url))
    return {**result, "config": f"{result['config']}, vLLM's own OpenAI server"}


PHASES = {"http": phase_http, "vllm_http": phase_vllm_http, "offline": phase_offline, "hf": phase_hf}


def run_phase(name: str, model: str, dtype: str | None = None) -> dict:
    """Each phase in a fresh process, so engines do not overlap in memory or CPU."""
    env = {**os.environ, **({"FLYWHEEL_ENGINE_DTYPE": dtype} if dtype else {})}
    result = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--model", model],
        capture_output=True, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"phase {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the converted default model)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--dtypes", default="", help="comma-separated engine dtypes to add as offline phases")
    parser.add_argument("--only-dtypes", action="store_true", help="run only the --dtypes phases")
    parser.add_argument("--servers", action="store_true", help="run only our HTTP API and vLLM's server, side by side")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args.model)))
        return 0

    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings

    (ROOT / ".flywheel").mkdir(exist_ok=True)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    results = {}
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for dtype in dtypes:
        print(f"running offline in {dtype}…", file=sys.stderr)
        results[f"offline_{dtype}"] = run_phase("offline", model, dtype)
    if args.servers:  # the two servers, twice each, alternating
        runs: dict[str, list[dict]] = {"http": [], "vllm_http": []}
        for _ in range(2):
            for name, done in runs.items():
                print(f"running {name}…", file=sys.stderr)
                done.append(run_phase(name, model))
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["http"], runs["vllm_http"], strict=True)]
        print(json.dumps({"benchmark": "serving-servers", "model": model, "runs": runs,
                          "http_over_vllm_server": ratios}, indent=2))  # fmt: skip
        return 0
    if args.only_dtypes:
        print(json.dumps({"benchmark": "serving", "model": model, "results": results}, indent=2))
        return 0
    for name in ("http", "vllm_http", "offline", "hf"):
        print(f"running {name}…", file=sys.stderr)
        results[name] = run_phase(name, model)
    http, vllm_http, offline, hf = (results[k]["tokens_per_s"] for k in ("http", "vllm_http", "offline", "hf"))
    report = {
        "benchmark": "serving",
        "model": model,
        "prompts": len(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "results": results,
        "ratios": {
            "http_over_offline": http / offline,
            "http_over_hf": http / hf,
            "http_over_vllm_server": http / vllm_http,
            "ttft_p50_over_vllm_server": results["http"]["ttft_p50_s"] / results["vllm_http"]["ttft_p50_s"],
        },
        "targets": {"http_over_offline": 0.85, "http_over_hf": 3.0},
        "meets_targets": http / offline >= 0.85 and http / hf >= 3.0,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
