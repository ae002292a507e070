"""Serving beside training on the same cores: how each way the trainer yields the CPU shares it (JSON).

One `flywheel serve` (default model, no broker) under a steady chat load of `--users` concurrent
clients; in each window a training process does what most of a round does (the LoRA policy's
forward and backward over `--train-batch` x 128 tokens, in a loop) under one of the trainer's CPU policies
(`trainer/cpu.py`: `nice`, `idle`, `normal`; `paceD`: `nice` and a duty cycle D, `trainer/pacing.py`;
a suffix `@C` pins the trainer to core C), or no training runs at all. `--engine-cpus` repeats it all
for each way of binding the engine's OpenMP threads (`auto`: vLLM's, on every core here; `1`: on
core 1 alone, leaving core 0 to the front end and the trainer; `1/1`: that, and serving's whole
process tree, front end and engine process, pinned to core 1 as well). Windows go round-robin over the modes `--repeats`
times, so drift on the machine falls on every mode alike. For each mode: chat completions per
second and median latency against the no-training windows (ratios, with their range over the
repeats), and training steps per second against training alone on an idle machine.

    python bench/sharing.py [--modes none,nice,pace0.5,normal@0] [--engine-cpus auto,1] [--window-s 60]
        [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import PROMPTS, serving_process  # noqa: E402

MAX_TOKENS = 64


def train_forever(mode: str, model: str, steps_file: Path, batch: int = 2) -> None:
    """The training workload: LoRA forward and backward on the default policy, one line per step."""
    from trainer.cpu import yield_cpu
    from trainer.pacing import install

    mode, _, cores = mode.partition("@")  # normal@0: the trainer pinned to core 0
    if cores:
        os.sched_setaffinity(0, {int(core) for core in cores.split("+")})
    if mode.startswith("pace"):  # pace0.5: the trainer's default policy with a duty cycle of 0.5
        yield_cpu("nice")
        install(float(mode[4:]))
    elif mode.startswith("nice") and mode[4:].isdigit():  # nice19: the nice policy at that niceness
        yield_cpu("nice", nice=int(mode[4:]))
    else:
        yield_cpu(mode)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    policy = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, base.config.vocab_size, (batch, 128))
    with steps_file.open("a") as out:
        while True:
            loss = policy(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            out.write(f"{time.monotonic()}\n")
            out.flush()


def step_rate(steps_file: Path, start: float, end: float) -> float:
    times = [float(t) for t in steps_file.read_text().split()] if steps_file.exists() else []
    inside = [t for t in times if start <= t <= end]
    return len(inside) / (end - start)


async def chat_window(url: str, users: int, seconds: float) -> tuple[int, list[float]]:
    import httpx

    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def user(client: httpx.AsyncClient, index: int) -> None:
        turn = index
        while time.monotonic() < deadline:
            body = {"messages": [{"role": "user", "content": PROMPTS[turn % len(PROMPTS)]}],
                    "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": turn}  # fmt: skip
            started = time.monotonic()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            response.raise_for_status()
            if time.monotonic() <= deadline:
                latencies.append(time.monotonic() - started)
            turn += users

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(user(client, i) for i in range(users)))
    return len(latencies), latencies


def start_trainer(mode: str, model: str, steps_file: Path, batch: int) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.sharing import train_forever; "
            "from pathlib import Path; "
            f"train_forever({mode!r}, {model!r}, Path({str(steps_file)!r}), {batch})")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def warm_trainer(mode: str, model: str, steps_file: Path, batch: int) -> subprocess.Popen:
    """Start the training process and wait for its first step (model load is not a training window)."""
    steps_file.unlink(missing_ok=True)
    trainer = start_trainer(mode, model, steps_file, batch)
    while not steps_file.exists() or not steps_file.read_text().strip():
        if trainer.poll() is not None:
            raise RuntimeError(f"training process ({mode}) exited with {trainer.returncode}")
        time.sleep(0.5)
    return trainer


def summarise(windows: list[dict], alone: dict[str, float], first_idle: list[dict] | None = None) -> dict:
    """Per mode, against the idle windows of the same engine (and of the first engine, when given)."""
    idle = [w for w in windows if w["mode"] == "none"]
    idle_rate = statistics.median(w["completions_per_s"] for w in idle)
    idle_p50 = statistics.median(w["p50_s"] for w in idle)
    modes = {}
    for mode in dict.fromkeys(w["mode"] for w in windows):
        mine = [w for w in windows if w["mode"] == mode]
        throughput = [w["completions_per_s"] / idle_rate for w in mine]
        latency = [w["p50_s"] / idle_p50 for w in mine]
        row = {
            "completions_per_s": statistics.median(w["completions_per_s"] for w in mine),
            "p50_s": statistics.median(w["p50_s"] for w in mine),
            "throughput_ratio": statistics.median(throughput),
            "throughput_ratio_range": [min(throughput), max(throughput)],
            "p50_latency_ratio": statistics.median(latency),
            "p50_latency_ratio_range": [min(latency), max(latency)],
        }
        if first_idle:  # against the first engine's idle serving: what a user of this binding gets
            row["throughput_vs_first_idle"] = row["completions_per_s"] / statistics.median(
                w["completions_per_s"] for w in first_idle
            )
            row["p50_vs_first_idle"] = row["p50_s"] / statistics.median(w["p50_s"] for w in first_idle)
        if mode != "none":
            rates = [w["train_steps_per_s"] for w in mine]
            row["train_steps_per_s"] = statistics.median(rates)
            row["train_ratio_to_alone"] = statistics.median(rates) / alone[mode] if alone.get(mode) else None
            row["meets_targets"] = row["throughput_ratio"] >= 0.5 and row["p50_latency_ratio"] <= 2.0
        modes[mode] = row
    return modes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the converted default model)")
    parser.add_argument("--modes", default="none,nice,pace0.5", help="comma-separated: none and trainer CPU policies")
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=4, help="concurrent chat clients (the simulator's 4 turns)")
    parser.add_argument("--train-batch", type=int, default=2,
                        help="sequences of 128 tokens per training step (small: fine-grained step counts)")  # fmt: skip
    parser.add_argument("--engine-cpus", default="auto",
                        help="comma-separated VLLM_CPU_OMP_THREADS_BIND values, one serving run each;"
                             " BIND/CORES also pins serving's process tree to CORES")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from bench.cleanup import stop_on_signals
    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings

    stop_on_signals()
    work = ROOT / ".flywheel"
    work.mkdir(exist_ok=True)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    steps_file = work / "bench-sharing-steps.txt"

    # training alone, before serving starts: the reference for what each policy leaves the trainer
    alone = {}
    for mode in (m for m in modes if m != "none"):
        trainer = warm_trainer(mode, model, steps_file, args.train_batch)
        started = time.monotonic()
        time.sleep(args.window_s / 2)
        alone[mode] = step_rate(steps_file, started, time.monotonic())
        stop(trainer)
        print(f"training alone ({mode}): {alone[mode]:.3f} steps/s", file=sys.stderr)

    windows = []
    engines = [e.strip() for e in args.engine_cpus.split(",") if e.strip()]
    for engine in engines:
        bind, _, tree = engine.partition("/")  # 1/1: the engine's threads on core 1 and all of serving too
        env = {"VLLM_CPU_OMP_THREADS_BIND": bind}
        log_name = f"bench-sharing-serve-{engine.replace('/', '-')}.log"
        with serving_process(model, 18766, log_name, env, cores=tree) as url:
            asyncio.run(chat_window(url, args.users, 10))  # warm-up
            for repeat in range(args.repeats):
                for mode in modes:
                    trainer = warm_trainer(mode, model, steps_file, args.train_batch) if mode != "none" else None
                    started = time.monotonic()
                    count, latencies = asyncio.run(chat_window(url, args.users, args.window_s))
                    ended = time.monotonic()
                    window = {"engine_cpus": engine, "mode": mode, "repeat": repeat, "completions": count,
                              "completions_per_s": count / (ended - started),
                              "p50_s": statistics.median(latencies) if latencies else None}  # fmt: skip
                    if trainer is not None:
                        window["train_steps_per_s"] = step_rate(steps_file, started, ended)
                        stop(trainer)
                    windows.append(window)
                    print(json.dumps(window), file=sys.stderr)
    by_engine = {e: [w for w in windows if w["engine_cpus"] == e] for e in engines}
    first_idle = [w for w in by_engine[engines[0]] if w["mode"] == "none"]
    report = {
        "benchmark": "sharing",
        "model": model,
        "users": args.users,
        "window_s": args.window_s,
        "train_batch": args.train_batch,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "training_alone_steps_per_s": alone,
        "engine_cpus": {
            engine: summarise(mine, alone, first_idle if engine != engines[0] else None)
            for engine, mine in by_engine.items()
        },
        "targets": {"throughput_ratio": ">= 0.5", "p50_latency_ratio": "<= 2.0"},
        "windows": windows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
