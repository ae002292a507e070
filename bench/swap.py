"""Hot-swap: time from PolicyPublished to the first response served by the new version (JSON).

Starts its own broker and one serving replica on the default model with every user on the canary
(FLYWHEEL_CANARY_FRACTION=1.0), publishes rank-16 PEFT LoRA versions as the trainer does (model
store, then PolicyPublished on flywheel.policy.v1), and times each swap with a probe client that
asks back to back which version answers: (a) idle, (b) while N streaming clients (openai) run
throughout. Under load it also counts failed or truncated requests and compares the clients'
tokens/s in the window after each announcement with windows between swaps, in the same run.

    python bench/swap.py [--swaps N] [--clients N] [--model DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.swap_traffic import (  # noqa: E402
    LOAD_KEY,
    LOAD_MAX_TOKENS,
    LORA_ALPHA,
    LORA_B_STD,
    LORA_RANK,
    PROBE_KEY,
    Announcer,
    Probe,
    make_versions,
    stream_forever,
)

log = logging.getLogger("bench.swap")

WARM_UP_S = 5.0  # load clients running before anything is measured
SWAP_WINDOW_S = 3.0  # tokens/s "during a swap": from the announcement to this many seconds after
SETTLE_S = 1.0  # not counted on either side
STEADY_WINDOW_S = 3.0  # then a window without a swap, before the next announcement
SWAP_TIMEOUT_S = 60.0
TARGETS = {"swap_p50_s": 1.0, "failed_requests": 0, "swap_window_throughput_ratio": 0.8}


# -- phases


async def policy_status(url: str) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"{url}/v1/policy")).json()


async def timed_swap(url: str, announcer: Announcer, probe: Probe, manifest) -> dict:
    """Announce one version and wait for the probe's first answer from it."""
    published_at = await asyncio.to_thread(announcer.announce, manifest)
    seen = await probe.wait_for(manifest.version, SWAP_TIMEOUT_S)
    record = {"version": manifest.version, "published_at": published_at, "load_1m": os.getloadavg()[0]}
    if seen is None:
        log.warning("%s not served within %.0f s", manifest.version, SWAP_TIMEOUT_S)
        return record | {"first_response_s": None}
    sent, answered = seen
    loaded = {entry["version"]: entry for entry in (await policy_status(url))["loaded"]}
    # The version went live between the probe's previous request and `sent`; serving's own
    # swap_seconds runs from the event's created_at to the moment the router switched.
    record |= {
        "first_response_s": answered - published_at,
        "first_request_sent_s": sent - published_at,
        "live_s": loaded.get(manifest.version, {}).get("swap_seconds"),
    }
    log.info("%s: first response after %.3f s", manifest.version, record["first_response_s"])
    return record


async def idle_phase(url: str, announcer: Announcer, manifests: list) -> tuple[list[dict], Probe]:
    probe, stop = Probe(url), asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    try:
        await asyncio.sleep(1.0)
        swaps = []
        for manifest in manifests:
            swaps.append(await timed_swap(url, announcer, probe, manifest))
            await asyncio.sleep(1.0)  # the replaced adapters are unloaded in the background
    finally:
        stop.set()
        await task
    return swaps, probe


async def load_phase(url: str, announcer: Announcer, manifests: list, clients: int) -> dict:
    """Clients stream throughout; each cycle: announce, swap window, settle, steady window."""
    probe, stop, streams = Probe(url), asyncio.Event(), []
    tasks = [asyncio.create_task(stream_forever(url, i, stop, streams)) for i in range(clients)]
    tasks.append(asyncio.create_task(probe.run(stop)))
    swaps, swap_windows, steady_windows = [], [], []
    try:
        await asyncio.sleep(WARM_UP_S)
        before = (time.time(), time.time() + 2 * STEADY_WINDOW_S)
        await asyncio.sleep(2 * STEADY_WINDOW_S)
        for manifest in manifests:
            record = await timed_swap(url, announcer, probe, manifest)
            swaps.append(record)
            start = record["published_at"]
            swap_windows.append((start, start + SWAP_WINDOW_S))
            steady_start = max(start + SWAP_WINDOW_S, time.time()) + SETTLE_S
            steady_windows.append((steady_start, steady_start + STEADY_WINDOW_S))
            await asyncio.sleep(steady_start + STEADY_WINDOW_S - time.time())
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    def rate(windows: list[tuple[float, float]]) -> float:
        tokens = sum(s.tokens_between(a, b) for s in streams for a, b in windows)
        return tokens / sum(b - a for a, b in windows)

    steady, during = rate(steady_windows), rate(swap_windows)
    failed = [s for s in streams if s.error or s.finish not in ("stop", "length")]
    chunks = sum(len(s.chunk_times) for s in streams)
    spanning = sum(1 for s in streams if any(s.started < a < s.ended for a, _ in swap_windows))
    return {
        "swaps": swaps,
        "probe": probe,
        "streams": len(streams),
        "failed_streams": len(failed),
        "failure_examples": [s.error or f"finish_reason {s.finish!r}" for s in failed[:3]],
        "mixed_version_streams": sum(1 for s in streams if len(s.versions) > 1),
        "streams_spanning_a_swap": spanning,
        "tokens_per_chunk": sum(s.tokens for s in streams) / max(1, chunks),
        "throughput": {
            "steady_tokens_per_s": steady,
            "swap_window_tokens_per_s": during,
            "ratio": during / steady,
            "worst_swap_window_ratio": min(rate([w]) for w in swap_windows) / steady,
            "before_any_swap_tokens_per_s": rate([before]),
            "swap_window_s": SWAP_WINDOW_S,
            "steady_window_s": STEADY_WINDOW_S,
            "windows": len(swap_windows),
        },
    }


# -- where the time goes


class DeliveryWatch:
    """A second reader of the policy topic, built like serving's (PolicyLog): when each event reaches a reader."""

    def __init__(self, bootstrap: str) -> None:
        from flywheel.channel import PolicyLog

        self.delivered: dict[str, float] = {}
        self.log = PolicyLog(bootstrap, self._on_event, "bench-swap-watch").start()
        self.log.wait_caught_up(30)

    def _on_event(self, event) -> None:
        if event.HasField("published"):
            self.delivered.setdefault(event.published.version, time.time())

    def stop(self) -> None:
        self.log.stop()


class ForeignCpu:
    """Cores used by processes outside this one and its children (serving, the broker), per interval."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.ours = psutil.Process()
        self.last = (time.monotonic(), self._foreign_seconds())

    def _foreign_seconds(self) -> float:
        total = self.psutil.cpu_times()
        busy = sum(total) - total.idle - total.iowait
        ours = 0.0
        for process in [self.ours, *self.ours.children(recursive=True)]:
            try:
                ours += sum(process.cpu_times()[:4])  # user, system, and of its children already reaped
            except self.psutil.Error:
                pass
        return busy - ours

    def cores_since_last(self) -> float:
        now, seconds = time.monotonic(), self._foreign_seconds()
        (then, before), self.last = self.last, (now, seconds)
        return max(0.0, (seconds - before) / (now - then))


def load_seconds(serving_log: str) -> dict[str, float]:
    """Serving's own timing of each load: checks, add_lora and the warm-up request ("loaded X in N ms")."""
    return {m[1]: int(m[2]) / 1000 for m in re.finditer(r"serving\.rollout: loaded (\S+) in (\d+) ms", serving_log)}


def check_seconds(store, versions: list[str]) -> list[float]:
    """The receiver's pre-engine checks (sha256 of every file, every tensor read), timed here on the same files."""
    from serving.versions import check_version

    took = []
    for version in versions:
        started = time.perf_counter()
        check_version(store, version, LORA_RANK)
        took.append(time.perf_counter() - started)
    return took


def summarise(swaps: list[dict], delivered: dict[str, float], loaded: dict[str, float]) -> dict:
    def stats(values: list[float | None]) -> dict:
        values = [v for v in values if v is not None]
        if not values:
            return {"p50": None, "max": None}
        return {"p50": statistics.median(values), "max": max(values)}

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    latency = [s["first_response_s"] for s in swaps]
    done = [s for s in swaps if s["first_response_s"] is not None]
    delivery = [delivered[s["version"]] - s["published_at"] for s in done if s["version"] in delivered]
    per_swap = [
        {"first_response_s": rounded(s["first_response_s"]), "published_to_routed_s": rounded(s.get("live_s")),
         "load_s": loaded.get(s["version"]), "load_average_1m": round(s["load_1m"], 2)}
        for s in swaps
    ]  # fmt: skip
    return {
        "swap_latency_s": stats(latency) | {"not_served": len(swaps) - len(done)},
        "breakdown_s": {
            "kafka_delivery_to_a_reader": stats(delivery),
            "load_check_add_lora_warm_up": stats([loaded.get(s["version"]) for s in done]),
            "published_to_routed": stats([s["live_s"] for s in done]),
            "routed_to_probe_response": stats([s["first_response_s"] - s["live_s"] for s in done if s["live_s"]]),
            "first_new_probe_request_sent": stats([s["first_request_sent_s"] for s in done]),
        },
        "per_swap": per_swap,
    }


def probe_summary(probe: Probe) -> dict:
    """The probe's own request time bounds how soon it can see a new version."""
    return {
        "probe_requests": len(probe.latencies),
        "probe_request_s_p50": statistics.median(probe.latencies),
        "probe_failures": len(probe.failures),
        "probe_failure_examples": probe.failures[:3],
    }


# -- the run


async def measure(url: str, announcer: Announcer, idle: list, loaded: list, clients: int, cpu: ForeignCpu) -> dict:
    log.info("idle: %d swaps", len(idle))
    cpu.cores_since_last()
    idle_swaps, idle_probe = await idle_phase(url, announcer, idle)
    idle_foreign = cpu.cores_since_last()
    log.info("under load: %d streaming clients, %d swaps", clients, len(loaded))
    under_load = await load_phase(url, announcer, loaded, clients)
    return {
        "idle_swaps": idle_swaps,
        "idle_probe": idle_probe,
        "under_load": under_load,
        "foreign_cores": {"idle": idle_foreign, "under_load": cpu.cores_since_last()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=20, help="swaps timed idle, and as many under load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients under load")
    parser.add_argument("--model", help="base model directory (default: the converted default model)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kafka", "httpx", "flywheel.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from bench.cleanup import stop_on_signals
    from flywheel.broker import Broker
    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings
    from flywheel.store import ModelStore
    from tests.conftest import free_port, serving_env, start_process, stop_process, wait_ready

    stop_on_signals()  # SIGTERM midway stops serving and the broker too (they run in groups of their own)
    started, load_start = time.monotonic(), os.getloadavg()
    (ROOT / ".flywheel").mkdir(exist_ok=True)
    model = args.model or str(prepare_default_model(CommonSettings().models_dir))
    log_path = ROOT / ".flywheel" / "bench-swap.log"
    log_path.unlink(missing_ok=True)
    keys = [f"{PROBE_KEY}:probe", *(f"{LOAD_KEY}-{i}:load-{i}" for i in range(args.clients))]
    broker = Broker(port=free_port()).start()
    server = None
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-swap-") as tmp:
        try:
            env = serving_env(
                Path(tmp), broker.bootstrap, FLYWHEEL_CANARY_FRACTION="1.0", FLYWHEEL_REPLICA_ID="bench-swap",
                FLYWHEEL_API_KEYS=",".join(keys), FLYWHEEL_MAX_TOKENS_LIMIT=str(LOAD_MAX_TOKENS),
            )  # fmt: skip
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "flywheel.cli", "serve", "--model", model, "--port", str(port)]
            server = start_process(argv, env, log_path)
            log.info("serving starting (log: %s); making %d versions meanwhile", log_path, 2 * args.swaps)
            store = ModelStore(Path(env["FLYWHEEL_DATA_DIR"]) / "store")
            names = [f"swap-{i:03d}" for i in range(1, 2 * args.swaps + 1)]
            manifests = make_versions(model, store, names)
            verify = check_seconds(store, names)
            wait_ready(url, server, log_path, timeout=600)
            log.info("serving ready")
            announcer, watch = Announcer(broker.bootstrap, store), DeliveryWatch(broker.bootstrap)
            try:
                cpu = ForeignCpu()
                idle_versions, load_versions = manifests[: args.swaps], manifests[args.swaps :]
                results = asyncio.run(measure(url, announcer, idle_versions, load_versions, args.clients, cpu))
            finally:
                announcer.close()
                watch.stop()
            adapter_bytes = sum(f.size for f in manifests[0].files)
        finally:
            if server is not None:
                stop_process(server)
            broker.stop()
    loaded = load_seconds(log_path.read_text(errors="replace"))
    idle = summarise(results["idle_swaps"], watch.delivered, loaded)
    load = results["under_load"]
    under_load = summarise(load["swaps"], watch.delivered, loaded)
    probe_failures = len(results["idle_probe"].failures) + len(load["probe"].failures)
    failed = load["failed_streams"] + probe_failures
    ratio = load["throughput"]["ratio"]
    met = {
        "swap_p50_idle": (idle["swap_latency_s"]["p50"] or 1e9) <= TARGETS["swap_p50_s"],
        "swap_p50_under_load": (under_load["swap_latency_s"]["p50"] or 1e9) <= TARGETS["swap_p50_s"],
        "zero_failed_requests": failed == 0,
        "swap_window_throughput": ratio >= TARGETS["swap_window_throughput_ratio"],
    }
    report = {
        "benchmark": "swap",
        "model": model,
        "adapter": {"rank": LORA_RANK, "alpha": LORA_ALPHA, "lora_b_std": LORA_B_STD, "mib": adapter_bytes / 2**20},
        "swaps": args.swaps,
        "clients": args.clients,
        "idle": idle | probe_summary(results["idle_probe"]),
        "under_load": under_load
        | {
            **probe_summary(load["probe"]),
            "streams": load["streams"],
            "stream_max_tokens": LOAD_MAX_TOKENS,
            "failed_streams": load["failed_streams"],
            "failure_examples": load["failure_examples"],
            "mixed_version_streams": load["mixed_version_streams"],
            "streams_spanning_a_swap": load["streams_spanning_a_swap"],
            "tokens_per_chunk": load["tokens_per_chunk"],
            "throughput": load["throughput"],
        },
        "verify_s": {"p50": statistics.median(verify), "max": max(verify), "what": "sha256 + tensors read, here"},
        "failed_requests": failed,
        "targets": TARGETS,
        "met": met,
        "meets_targets": all(met.values()),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "other_processes_cpu_cores": results["foreign_cores"],
        "seconds": time.monotonic() - started,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
