"""Load held: chat and feedback at once for several minutes on `flywheel up`, loopback only (JSON).

Simulated users (`bench/faults.py`'s: chat, then one thumbs per answer, retried with its own
key) for `--duration`, the trainer working as it would; every `--sample-s` the resident memory
of each service (its process and children: vLLM's engine, the relay, Tansu). Then: errors by
kind; p50 and p99 latency of chat and of feedback in each fifth of the run, so that a slow drift
shows; each service's memory at the start and at the end of the held load and its growth per
minute, so that a leak shows; and the feedback counts against the trainer's store (lost: 0).

    python bench/load.py [--duration 10m] [--threads 4] [--tiny | --model DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faults import SETTINGS  # noqa: E402
from bench.learning import Stack, parse_duration  # noqa: E402
from bench.traffic import ACCESS, Traffic, feedback_counts, report, settle  # noqa: E402

log = logging.getLogger("bench.load")
SERVICES = {"broker": "broker", "serve": "serving", "feedback": "feedback", "train": "trainer"}
WINDOWS = 5


def memory_mib(stack: Stack) -> dict[str, float]:
    """Resident memory of each service with its children, in MiB."""
    import psutil

    sizes = {}
    for process in psutil.Process(stack.process.pid).children():
        with contextlib.suppress(psutil.Error):
            command = next((c for c in process.cmdline()[3:5] if c in SERVICES), None)
            if command:
                family = [process, *process.children(recursive=True)]
                sizes[SERVICES[command]] = sum(p.memory_info().rss for p in family) / 2**20
    return sizes


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_windows(samples: list[tuple[float, float]], started: float, ended: float, rounds: list[tuple[float, bool]],
                    ) -> list[dict]:  # fmt: skip
    """p50/p99 (ms) and count in each of WINDOWS equal spans, and the share of each the trainer spent in a round.

    `rounds`: (seconds since start, a round running) at each sample. Two cores are shared with
    the trainer, so a round shows in chat's latency; the share tells that from a drift.
    """
    span = (ended - started) / WINDOWS
    rows = []
    for i in range(WINDOWS):
        inside = [s for at, s in samples if started + i * span <= at < started + (i + 1) * span]
        running = [busy for at, busy in rounds if i * span <= at < (i + 1) * span]
        rows.append({"n": len(inside), "p50_ms": _ms(percentile(inside, 0.5)), "p99_ms": _ms(percentile(inside, 0.99)),
                     "in_round": round(sum(running) / len(running), 2) if running else None})  # fmt: skip
    return rows


def round_running(stack: Stack) -> bool:
    try:
        return bool(httpx.get(f"{stack.url('trainer')}/status", timeout=10).json()["round_running"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def memory_growth(samples: list[tuple[float, dict[str, float]]]) -> dict[str, dict]:
    """Per service: MiB in the first and last fifth (medians) and the least-squares slope in MiB/min."""
    growth = {}
    for name in SERVICES.values():
        points = [(at, sizes[name]) for at, sizes in samples if name in sizes]
        if len(points) < 2:
            continue
        fifth = max(1, len(points) // WINDOWS)
        slope = statistics.linear_regression([at / 60 for at, _ in points], [mib for _, mib in points]).slope
        growth[name] = {"start_mib": round(statistics.median(m for _, m in points[:fifth]), 1),
                        "end_mib": round(statistics.median(m for _, m in points[-fifth:]), 1),
                        "mib_per_min": round(slope, 2)}  # fmt: skip
    return growth


def run(args: argparse.Namespace) -> dict:
    from flywheel.models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="flywheel-load-"))
    model = args.model or (str(build_tiny_model(work / "tiny-model")) if args.tiny else "")
    if not model and args.models_dir:  # the converted default model, shared with other benchmarks
        (work / "data").mkdir()
        (work / "data" / "models").symlink_to(Path(args.models_dir).resolve(), target_is_directory=True)
    settings = SETTINGS if args.tiny else ACCESS  # the default model: the default settings
    stack = Stack(work / "data", model, args.stack_log or work / "stack.log", settings)
    traffic, memory, rounds = None, [], []
    try:
        stack.wait_ready()
        traffic = Traffic(stack, retry_s=120, threads=args.threads, max_tokens=args.max_tokens, pause_s=0.0).start()
        started = time.monotonic()
        ends = started + parse_duration(args.duration)
        while time.monotonic() < ends:
            memory.append((time.monotonic() - started, memory_mib(stack)))
            rounds.append((memory[-1][0], round_running(stack)))
            log.info("%.0f s: %s; memory %s", memory[-1][0], dict(traffic.chat), memory[-1][1])
            time.sleep(args.sample_s)
        ended = time.monotonic()
        traffic.stop()
        rows = settle(stack, traffic.accepted, 180)
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    seconds = ended - started
    result = {
        "duration_s": round(seconds),
        "threads": args.threads,
        "model": args.model or ("tiny" if args.tiny else "default"),
        "chat": dict(traffic.chat),
        "chat_per_s": round(traffic.chat["ok"] / seconds, 2),
        "feedback": feedback_counts(traffic.feedback, traffic.accepted, rows),
        "unexpected_answers": traffic.errors,
        "latency": {kind: latency_windows(times, started, ended, rounds) for kind, times in traffic.seconds.items()},
        "memory": memory_growth(memory),
    }
    counts = result["feedback"]
    result["ok"] = not counts["lost"] and not counts["duplicates"] and not traffic.errors and counts["accepted"] > 0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10m", help="how long the load is held (default 10m)")
    parser.add_argument("--threads", type=int, default=4, help="simulated users sending at once")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sample-s", type=float, default=5.0, help="how often memory is read")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model and the fault suite's fast rounds")
    parser.add_argument("--model", default="", help="base model (default: the converted default)")
    parser.add_argument("--models-dir", default=str(ROOT / ".flywheel" / "models"),
                        help="where the converted default model is kept")  # fmt: skip
    parser.add_argument("--stack-log", type=Path)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    parse_duration(args.duration)
    return report(run, args)


if __name__ == "__main__":
    sys.exit(main())
