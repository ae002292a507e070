"""Learning benchmark: the whole loop as `flywheel up` runs it, simulated users with a preference (JSON + PNG).

For each `--preference` in turn: a fresh data dir and free ports, `flywheel up` (default model and
settings unless `--model`), `flywheel simulate --preference P --duration D` against it, and beside
it a probe that samples the trainer's /status and serving's /metrics every few seconds. Then the
stack is stopped (its process group, on every exit path) and the report is written:

- base satisfaction; every publication with its time (minutes since the simulation started);
- the first version clearly better than base (Newcombe 95 % interval above zero): when it was
  published and first served, its satisfaction and lift;
- per round: phase times, reward-model accuracy, reward gain, KL, answer length, gate outcome;
- serving while the trainer works: completions per second and the median chat latency during
  rounds against the same outside rounds (ratios, from serving's own Prometheus counters).

    python bench/learning.py --preference concise --preference question [--duration 30m]
        [--out-dir docs/learning-runs/DATE] [--model DIR] [--seed N] [--keep-data]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.learning")
PROBE_S = 5.0
# judge: an AI judge is set; sft: corrections came
PHASES = ("judge", "raters", "collect", "reward_model", "sft", "ppo", "grpo", "dpo", "kto", "evaluate", "publish")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise SystemExit(f"learning: {text!r} is not a duration (seconds, or 15m, 1h)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def setting_env(assignments: list[str] | None) -> dict[str, str]:
    """`--set algorithm=dpo --set dpo.beta=0.2` as the variables the services read (FLYWHEEL_DPO__BETA)."""
    env = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", name):
            raise SystemExit(f"learning: --set takes NAME=VALUE or SECTION.NAME=VALUE, got {item!r}")
        env["FLYWHEEL_" + name.upper().replace(".", "__")] = value
    return env


class Stack:
    """`flywheel up` in its own process group; `stop` ends the whole group (vLLM's engine included)."""

    def __init__(self, data_dir: Path, model: str, log_path: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.ports = {name: free_port() for name in ("serving", "broker", "serving-grpc", "feedback",
                                                      "feedback-grpc", "trainer", "trainer-grpc")}  # fmt: skip
        args = [sys.executable, "-m", "flywheel.cli", "up", "--data-dir", str(self.data_dir)]
        args += [arg for name, port in self.ports.items() for arg in (f"--{name}-port", str(port))]
        if model:
            args += ["--model", model]
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "TERM": "dumb", **(settings or {})}
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)  # fmt: skip

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        for name in ("serving", "feedback", "trainer"):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"flywheel up exited ({self.process.returncode}); see {self.log.name}")
                try:
                    if httpx.get(f"{self.url(name)}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready within {timeout_s:.0f} s; see {self.log.name}")
                time.sleep(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # `flywheel up` stops its children in order
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
            except ProcessLookupError:
                pass
        self._kill_leftovers()
        self.log.close()

    def _kill_leftovers(self) -> None:
        """Children run in process groups of their own: any still alive (up was killed) are found by data dir."""
        import psutil

        for process in psutil.process_iter(["pid"]):
            try:
                if process.environ().get("FLYWHEEL_DATA_DIR") == str(self.data_dir):
                    process.kill()
            except (psutil.Error, OSError):
                continue


def completions_and_latency(metrics_text: str) -> tuple[float, dict[float, float]]:
    """Finished chat completions (all versions) and the chat route's latency histogram buckets."""
    done, buckets = 0.0, {}
    for line in metrics_text.splitlines():
        if line.startswith("flywheel_serving_chat_completions_total{"):
            done += float(line.rsplit(" ", 1)[1])
        elif line.startswith("flywheel_serving_request_latency_seconds_bucket{") and "chat/completions" in line:
            bound = re.search(r'le="([^"]+)"', line)[1]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return done, buckets


def median_from_buckets(counts: dict[float, float]) -> float | None:
    """The histogram's median (linear within the bucket), from cumulative bucket counts."""
    bounds = sorted(counts)
    total = counts[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        if counts[bound] >= total / 2:
            if bound == float("inf"):
                return previous_bound
            share = (total / 2 - previous_count) / max(counts[bound] - previous_count, 1e-9)
            return previous_bound + share * (bound - previous_bound)
        previous_bound, previous_count = bound, counts[bound]
    return None


def serving_under_training(samples: list[dict]) -> dict:
    """Throughput and median latency of chat while a round runs, against outside rounds (from probe deltas)."""
    sums = {True: {"seconds": 0.0, "done": 0.0, "buckets": {}}, False: {"seconds": 0.0, "done": 0.0, "buckets": {}}}
    for before, after in itertools.pairwise(samples):
        side = sums[bool(before["round_running"] and after["round_running"])]
        if before["round_running"] != after["round_running"]:
            continue  # a round started or ended inside the interval: it belongs to neither side
        side["seconds"] += after["t"] - before["t"]
        side["done"] += after["done"] - before["done"]
        for bound, count in after["buckets"].items():
            side["buckets"][bound] = side["buckets"].get(bound, 0.0) + count - before["buckets"].get(bound, 0.0)
    out = {}
    for running, name in ((False, "idle"), (True, "training")):
        side = sums[running]
        out[name] = {
            "seconds": round(side["seconds"], 1),
            "completions_per_s": side["done"] / side["seconds"] if side["seconds"] else None,
            "median_latency_s": median_from_buckets(side["buckets"]),
        }
    out["throughput_ratio"] = _ratio(out["training"]["completions_per_s"], out["idle"]["completions_per_s"])
    out["latency_ratio"] = _ratio(out["training"]["median_latency_s"], out["idle"]["median_latency_s"])
    return out


def _ratio(value: float | None, against: float | None) -> float | None:
    return value / against if value is not None and against else None


def probe(stack: Stack, started: float) -> dict | None:
    try:
        status = httpx.get(f"{stack.url('trainer')}/status", timeout=5).json()
        done, buckets = completions_and_latency(httpx.get(f"{stack.url('serving')}/metrics", timeout=5).text)
    except (httpx.HTTPError, ValueError):
        return None
    return {"t": time.time() - started, "round_running": bool(status.get("round_running")), "done": done,
            "buckets": buckets}  # fmt: skip


def round_rows(history: dict, started: float) -> list[dict]:
    rows = []
    for record in history.get("rounds", []):
        m = record.get("metrics") or {}
        rows.append({
            "round": record["round"],
            "outcome": record["outcome"],
            "reason": record.get("reason", ""),
            "version": record.get("version", ""),
            "started_min": (record["started_at"] - started) / 60 if record.get("started_at") else None,
            "seconds": {phase: m.get(f"seconds_{phase}") for phase in (*PHASES, "round")},
            "pairs_train": m.get("pairs_train"),
            "pairs_ai": m.get("pairs_ai"),
            "raters_excluded": m.get("raters_excluded"),
            "reward_accuracy": m.get("reward_accuracy"),
            "reward_heldout_pairs": m.get("reward_heldout_pairs"),
            "reward_heldout_independent": m.get("reward_heldout_independent"),
            "reward_model_kept": bool(m.get("reward_model_kept")),
            "reward_gain": m.get("eval_reward_gain"),
            "reward_gain_stderr": m.get("eval_reward_gain_stderr"),
            "kl": m.get("eval_new_mean_kl"),
            "answer_length": m.get("eval_new_mean_length"),
            "reference_length": m.get("eval_reference_mean_length"),
            "feedback_to_policy_seconds": m.get("feedback_to_policy_seconds"),
        })  # fmt: skip
    return rows


def summarise(preference: str, report: dict, rounds: list[dict], publications: list[dict], serving: dict) -> dict:
    versions = {v["version"]: v for v in report.get("versions", [])}
    base = versions.get("base")
    clear = [v for v in report.get("versus_first", []) if v["ci_low"] > 0]
    published_at = {p["version"]: p["published_min"] for p in publications}
    first = None
    for entry in sorted(clear, key=lambda v: published_at.get(v["version"], float("inf"))):
        version = versions[entry["version"]]
        first = {
            "version": entry["version"],
            "published_min": published_at.get(entry["version"]),
            "first_served_min": version["first_seen_s"] / 60,
            "answers": version["answers"],
            "satisfaction": version["rate"],
            "lift_points": 100 * entry["difference"],
            "lift_ci_points": [100 * entry["ci_low"], 100 * entry["ci_high"]],
        }
        break
    first_policy_s = next((r["feedback_to_policy_seconds"] for r in rounds if r["feedback_to_policy_seconds"]), None)
    return {
        "preference": preference,
        "base": {"answers": base["answers"], "satisfaction": base["rate"], "ci": [base["ci_low"], base["ci_high"]]}
        if base else None,
        "publications": publications,
        "first_clearly_better": first,
        "feedback_to_policy_seconds": first_policy_s,
        "rounds": rounds,
        "serving_under_training": serving,
        "simulator": {"turns": report.get("turns"), "errors": report.get("errors", {}).get("total")},
    }


def write_chart(result: dict, report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for i, version in enumerate(v["version"] for v in report.get("versions", []) if v["answers"]):
        rows = [w for w in report["windows"] if w["version"] == version and w["answers"]]
        x = [(w["start_s"] + w["end_s"]) / 120 for w in rows]
        axes.plot(x, [w["rate"] for w in rows], "o-", color=f"C{i % 10}", label=version)
        axes.fill_between(x, [w["ci_low"] for w in rows], [w["ci_high"] for w in rows], color=f"C{i % 10}",
                          alpha=0.15, linewidth=0)  # fmt: skip
    for row in result["rounds"]:
        if row["started_min"] is not None and row["seconds"]["round"]:
            axes.axvspan(row["started_min"], row["started_min"] + row["seconds"]["round"] / 60, color="0.85", zorder=0)
    for publication in result["publications"]:
        axes.axvline(publication["published_min"], color="k", linestyle=":", linewidth=1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("minutes since the simulation started (grey: rounds; dotted: publications)")
    axes.set_ylabel("satisfied (95 % Wilson interval)")
    axes.set_title(f"Learning benchmark: {result['preference']}")
    axes.legend(loc="best", fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(path)


def run_one(preference: str, args: argparse.Namespace, out_dir: Path) -> dict:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", preference).strip("-")[:60] or "preference"
    run_dir = out_dir / slug
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"flywheel-learning-{slug}-"))
    if args.models_dir:  # the converted default model, shared between runs instead of converted again
        (data_dir / "models").symlink_to(Path(args.models_dir).resolve(), target_is_directory=True)
    stack = Stack(data_dir, args.model, run_dir / "stack.log", setting_env(args.set))
    samples: list[dict] = []
    try:
        stack.wait_ready()
        log.info("%s: the stack is up (data in %s); simulating for %s", preference, data_dir, args.duration)
        sim_args = [sys.executable, "-m", "flywheel.cli", "simulate", "--preference", preference,
                    "--duration", args.duration, "--serving-url", stack.url("serving"),
                    "--feedback-url", stack.url("feedback"), "--out", str(run_dir / "simulator"),
                    "--seed", str(args.seed), "--correction-share", str(args.correction_share),
                    "--contrarian-share", str(args.contrarian_share)]  # fmt: skip
        started = time.time()
        with open(run_dir / "simulate.log", "w", encoding="utf-8") as sim_log:
            simulate = subprocess.Popen(sim_args, cwd=ROOT, stdout=sim_log, stderr=subprocess.STDOUT)
            try:
                while simulate.poll() is None:
                    sample = probe(stack, started)
                    if sample:
                        samples.append(sample)
                    time.sleep(PROBE_S)
            finally:
                if simulate.poll() is None:
                    simulate.send_signal(signal.SIGINT)
                    simulate.wait(120)
        if simulate.returncode != 0:
            raise RuntimeError(f"flywheel simulate exited {simulate.returncode}; see {run_dir / 'simulate.log'}")
        history = httpx.get(f"{stack.url('trainer')}/history", params={"rounds": 1000}, timeout=30).json()
    finally:
        stack.stop()
    report = json.loads((run_dir / "simulator" / "report.json").read_text(encoding="utf-8"))
    from flywheel.store import ModelStore

    publications = [
        {"version": m.version, "published_min": (m.created_at - started) / 60, "parent": m.parent,
         "kl": m.metrics.get("eval_new_mean_kl"), "answer_length": m.metrics.get("eval_new_mean_length")}
        for m in ModelStore(data_dir / "store", readonly=True).versions()
    ]  # fmt: skip
    result = summarise(preference, report, round_rows(history, started), publications,
                       serving_under_training(samples))  # fmt: skip
    (run_dir / "learning.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_chart(result, report, run_dir / "learning.png")
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preference", action="append", help="a simulate preference spec; repeat to run several")
    parser.add_argument("--duration", default="30m", help="simulation time per preference (default 30m)")
    parser.add_argument("--model", default="", help="base model (default: the converted default)")
    parser.add_argument("--models-dir", default=str(ROOT / ".flywheel" / "models"),
                        help="where the converted default model is kept (shared by the runs)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--correction-share", type=float, default=0.0,
                        help="share of thumbs-down turns whose users also send a rewrite (simulate's)")  # fmt: skip
    parser.add_argument("--contrarian-share", type=float, default=0.0,
                        help="share of users who answer against the preference (simulate's)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "learning")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="a setting for the stack, e.g. algorithm=dpo or dpo.beta=0.2 (repeatable)")
    parser.add_argument("--keep-data", action="store_true", help="keep each run's data dir (printed in the log)")
    args = parser.parse_args()
    parse_duration(args.duration)
    setting_env(args.set)
    from bench.cleanup import stop_on_signals

    stop_on_signals()  # SIGTERM midway still stops the stack (`finally` in run_one)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the probe's requests, every 5 s
    Path(args.models_dir).mkdir(parents=True, exist_ok=True)
    results = []
    for preference in args.preference or ["concise"]:
        results.append(run_one(preference, args, args.out_dir))
        log.info("%s: %s", preference, json.dumps(results[-1]["first_clearly_better"]))
    summary = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "duration": args.duration,
               "seed": args.seed, "model": args.model or "default", "settings": args.set or [],
               "results": results}  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "learning.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
