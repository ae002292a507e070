"""Fault suite: a short learning loop under `flywheel up` while each part of it is broken in turn (JSON).

A tiny model (built on the fly unless `--model`), settings that let a round run and publish in
about a minute, and simulated users: chat, then thumbs with an idempotency key of their own,
retried as a client would (connection errors, 429 and 503, for up to `--retry-s`). The faults,
in order (`--fault` picks some):

  poison    a record no consumer can use on each topic: garbage bytes, a comparison ranking past
            its choices, a completion without ids, policies named outside the model store
  broker    SIGKILL the broker's process group: Tansu forgets every topic, the outbox replays
  serving   SIGKILL serving's process group, its engine included
  feedback  SIGKILL the feedback service (its relay dies with it)
  relay     SIGKILL the relay process alone; the feedback service starts another
  trainer   SIGKILL the trainer during a round
  disk      fill the tmpfs the outbox lives on, hold it full, free it (needs root to mount)

After each one: the seconds until every service is healthy again on its own (the supervisor
restarts what died). At the end: every feedback event answered 202 is in the trainer's store
exactly once, every version in the model store verifies, and the counts (sent, accepted,
stored, duplicates, lost) and every chat outcome are printed as one JSON object.

    python bench/faults.py [--fault broker --fault disk] [--hold-s 20] [--out FILE] [--model DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.learning import Stack  # noqa: E402
from bench.traffic import ACCESS, Traffic, feedback_counts, report, settle  # noqa: E402

log = logging.getLogger("bench.faults")
FAULTS = ("poison", "broker", "serving", "feedback", "relay", "trainer", "disk")
OUTBOX_TMPFS_BYTES = 16 << 20
# Rounds that run and publish on a tiny random model in about a minute, so that the faults meet a
# trainer at work and a serving that swaps versions. Learning is not what this suite measures.
SETTINGS = {
    **ACCESS,
    "FLYWHEEL_MAX_MODEL_LEN": "512", "FLYWHEEL_KV_CACHE_GIB": "1", "FLYWHEEL_MAX_TOKENS_LIMIT": "32",
    "FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK": "24", "FLYWHEEL_ROUNDS__MIN_PAIRS": "4",
    "FLYWHEEL_REWARD__EPOCHS": "1", "FLYWHEEL_REWARD__MIN_STEPS": "2", "FLYWHEEL_REWARD__LORA_RANK": "0",
    "FLYWHEEL_REWARD__ACCURACY_FLOOR": "0", "FLYWHEEL_REWARD__ACCURACY_TOLERANCE_STDERRS": "100",
    "FLYWHEEL_PPO__STEPS": "2", "FLYWHEEL_PPO__BATCH_SIZE": "8", "FLYWHEEL_PPO__RESPONSE_LENGTH": "8",
    # Two updates at 5e-4 left the tiny policy's samples unchanged (gain 0.000 +- 0.000): refused.
    "FLYWHEEL_PPO__EPOCHS": "1", "FLYWHEEL_PPO__LEARNING_RATE": "0.02",
    "FLYWHEEL_GATES__EVAL_PROMPTS": "4", "FLYWHEEL_GATES__EVAL_SAMPLES": "1",
    # Any policy that moved is published, better or worse: a gain on a random model is a coin flip.
    "FLYWHEEL_GATES__MIN_REWARD_GAIN": "-1000", "FLYWHEEL_GATES__MIN_GAIN_STDERRS": "-1000",
    "FLYWHEEL_GATES__KL_BUDGET": "1000000", "FLYWHEEL_GATES__LENGTH_BAND": "1000",
    "FLYWHEEL_GATES__MIN_LENGTH_RATIO": "0",
}  # fmt: skip


def healthy(stack: Stack) -> bool:
    from flywheel.broker import port_open

    if not port_open("127.0.0.1", stack.ports["broker"]):
        return False
    for name in ("serving", "feedback", "trainer"):
        try:
            if httpx.get(f"{stack.url(name)}/healthz", timeout=3).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True


def wait_healthy(stack: Stack, timeout_s: float = 300) -> float:
    started = time.monotonic()
    time.sleep(1.0)  # a killed process is not noticed at once
    while not healthy(stack):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the stack was not healthy again within {timeout_s:.0f} s; see {stack.log.name}")
        time.sleep(0.5)
    return time.monotonic() - started


def service_process(stack: Stack, command: str):
    """The process `flywheel up` started for `command` (broker, serve, feedback, train)."""
    import psutil

    for process in psutil.Process(stack.process.pid).children():
        with contextlib.suppress(psutil.Error):
            if command in process.cmdline()[3:5]:
                return process
    raise LookupError(f"no {command} process under flywheel up")


def cores(stack: Stack) -> dict:
    """The cores the trainer may run on and those the engine bound its compute threads to (flywheel/cores.py)."""
    bound = re.findall(r"local_rank=0, core ids=\[([\d, ]*)\]", (stack.data_dir / "logs" / "serving.log").read_text())
    return {
        "trainer": sorted(service_process(stack, "train").cpu_affinity()),
        "engine": [int(core) for core in bound[-1].split(",")] if bound else None,
    }


def kill_group(stack: Stack, command: str) -> None:
    os.killpg(service_process(stack, command).pid, signal.SIGKILL)


def kill_relay(stack: Stack) -> None:
    (relay,) = [p for p in service_process(stack, "feedback").children() if "spawn_main" in " ".join(p.cmdline())]
    relay.send_signal(signal.SIGKILL)


def trainer_status(stack: Stack) -> dict:
    return httpx.get(f"{stack.url('trainer')}/status", timeout=10).json()


def kill_trainer_in_a_round(stack: Stack, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        while not trainer_status(stack)["round_running"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no round started within {timeout_s:.0f} s")
            time.sleep(0.5)
        running = trainer_status(stack)["recent_rounds"][0]["round"]
        time.sleep(2)  # into the reward model or the policy's training
        status = trainer_status(stack)
        # a short round (a continuation) can end before the kill: wait for one that is still running
        if status["round_running"] and status["recent_rounds"][0]["round"] == running:
            kill_group(stack, "train")
            return {"round": running}


def poison(stack: Stack) -> dict:
    """Records nothing can use, on every topic; the consumers must skip and count them and go on."""
    from flywheel.channel import ADAPTER_KIND
    from flywheel.kafka import make_producer
    from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK, TOPIC_POLICY
    from flywheel.v1 import events_pb2

    bad_ranking = events_pb2.FeedbackEvent(event_id="poison-ranking", completion_id="c", idempotency_key="poison",
                                           choice_policy_versions=["a", "b"],
                                           comparison=events_pb2.Comparison(ranking=[0, 5]))  # fmt: skip
    records = [
        (TOPIC_FEEDBACK, b"\xff\x00 not a protobuf"), (TOPIC_FEEDBACK, bad_ranking.SerializeToString()),
        (TOPIC_COMPLETIONS, b"\xff\x00 not a protobuf"),
        (TOPIC_COMPLETIONS, events_pb2.Completion().SerializeToString()),
        (TOPIC_POLICY, b"\xff\x00 not a protobuf"),
    ]  # fmt: skip
    # Hand-built PolicyPublished records, not channel.publication(): deliberate poison (paths outside the store).
    for name in ("../trainer/work/candidates/refused", "/etc"):
        published = events_pb2.PolicyPublished(event_id=f"poison-{name}", version=name, path=name, kind=ADAPTER_KIND)
        records.append((TOPIC_POLICY, events_pb2.PolicyEvent(published=published).SerializeToString()))
    before = scrape(stack)
    producer = make_producer(f"127.0.0.1:{stack.ports['broker']}")
    for topic, value in records:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()
    time.sleep(10)  # the trainer polls every second, serving's receiver as often
    after = scrape(stack)
    return {"records": len(records), **{name: after[name] - before[name] for name in after}}


def scrape(stack: Stack) -> dict[str, float]:
    """Skipped-record counters of the trainer and serving."""
    values = {"trainer_skipped": 0.0, "serving_skipped": 0.0}
    for service, metric in (("trainer", "flywheel_trainer_events_invalid_total"),
                            ("serving", "flywheel_serving_policy_records_skipped_total")):  # fmt: skip
        for line in httpx.get(f"{stack.url(service)}/metrics", timeout=10).text.splitlines():
            if line.startswith(metric):
                values[f"{service}_skipped"] += float(line.rsplit(" ", 1)[1])
    return values


@contextlib.contextmanager
def outbox_tmpfs(data_dir: Path):
    """The outbox's directory on a small tmpfs, so the disk can really fill; None where mounting is refused."""
    target = data_dir / "feedback"
    target.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={OUTBOX_TMPFS_BYTES}", "tmpfs", str(target)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        log.warning("no tmpfs under the outbox (%s): the disk fault is skipped", mounted.stderr.strip())
        yield None
        return
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill_disk(target: Path, hold_s: float, traffic: Traffic) -> dict:
    filler = target / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
                out.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    refused_before = traffic.feedback["refused 503"]
    time.sleep(hold_s)
    # The outbox writes into pages SQLite already holds until it needs a new one: with a short hold
    # the first refusal can come later (seen with 5 s holds), so hold on until one came, 30 s at most.
    deadline = time.monotonic() + 30
    while traffic.feedback["refused 503"] == refused_before and time.monotonic() < deadline:
        time.sleep(0.5)
    refused = traffic.feedback["refused 503"] - refused_before
    filler.unlink()
    return {"refused_503_while_full": refused}


def check_store(data_dir: Path) -> dict:
    from flywheel.store import ModelStore

    store = ModelStore(data_dir / "store", readonly=True)
    verified, broken = [], []
    for entry in sorted((data_dir / "store").iterdir()) if (data_dir / "store").exists() else []:
        if entry.name.startswith(".tmp-") or not entry.is_dir():
            continue
        try:
            store.verify(entry.name)
            verified.append(entry.name)
        except Exception as exc:  # any failure to verify is a half-published version
            broken.append(f"{entry.name}: {exc}")
    return {"versions_published": len(verified), "half_published": broken}


def run(args: argparse.Namespace) -> dict:
    from flywheel.models import build_tiny_model

    data_dir = Path(tempfile.mkdtemp(prefix="flywheel-faults-"))
    model = args.model or str(build_tiny_model(data_dir / "tiny-model"))
    faults: list[dict] = []
    with outbox_tmpfs(data_dir / "data") as tmpfs:
        stack = Stack(data_dir / "data", model, args.stack_log or data_dir / "stack.log", SETTINGS)
        traffic = None
        try:
            stack.wait_ready()
            bound = cores(stack)
            traffic = Traffic(stack, args.retry_s).start()
            time.sleep(args.hold_s)
            for fault in args.fault or FAULTS:
                log.info("fault: %s", fault)
                detail = {}
                if fault == "poison":
                    detail = poison(stack)
                elif fault == "broker":
                    kill_group(stack, "broker")
                elif fault == "serving":
                    kill_group(stack, "serve")
                elif fault == "feedback":
                    kill_group(stack, "feedback")
                elif fault == "relay":
                    kill_relay(stack)
                elif fault == "trainer":
                    detail = kill_trainer_in_a_round(stack, args.round_wait_s)
                elif fault == "disk":
                    if tmpfs is None:
                        faults.append({"fault": fault, "skipped": "mounting a tmpfs was refused (needs root)"})
                        continue
                    detail = fill_disk(tmpfs, args.hold_s, traffic)
                faults.append({"fault": fault, "healthy_after_s": round(wait_healthy(stack), 1), **detail})
                if fault == "trainer":  # the round it was killed in, as the restarted trainer recorded it
                    (killed,) = [r for r in trainer_status(stack)["recent_rounds"] if r["round"] == detail["round"]]
                    faults[-1]["round_killed"] = {key: killed[key] for key in ("round", "outcome", "reason")}
                log.info("%s", faults[-1])
                time.sleep(args.hold_s)
            traffic.stop()
            rows = settle(stack, traffic.accepted, args.settle_s)
            rounds = trainer_status(stack).get("recent_rounds", [])
        finally:
            if traffic is not None:
                traffic.stop()
            stack.stop()
    result = {
        "faults": faults,
        "chat": dict(traffic.chat),
        "feedback": feedback_counts(traffic.feedback, traffic.accepted, rows),
        "unexpected_answers": traffic.errors,
        "rounds": Counter(r.get("outcome") for r in rounds),
        "cores": bound,
        **check_store(data_dir / "data"),
    }
    counts = result["feedback"]
    result["ok"] = (not counts["lost"] and not counts["duplicates"] and not traffic.errors
                    and not result["half_published"] and counts["accepted"] > 0)  # fmt: skip
    if not args.keep_data:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        result["data_dir"] = str(data_dir)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", action="append", choices=FAULTS, help="faults to apply, in order (default: all)")
    parser.add_argument("--hold-s", type=float, default=20.0, help="traffic before, between and after faults")
    parser.add_argument("--retry-s", type=float, default=120.0, help="how long a client retries one thumbs")
    parser.add_argument("--round-wait-s", type=float, default=300.0, help="the longest wait for a round to kill")
    parser.add_argument("--settle-s", type=float, default=180.0, help="the longest wait for the store to catch up")
    parser.add_argument("--model", default="", help="base model (default: a tiny random one built here)")
    parser.add_argument("--stack-log", type=Path, help="where `flywheel up`'s output goes (default: the data dir)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args()
    return report(run, args)


if __name__ == "__main__":
    sys.exit(main())
