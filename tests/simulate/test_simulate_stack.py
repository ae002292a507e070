"""`flywheel simulate` against the real stack: tiny-model serving, the feedback service, the broker.

Runs the CLI as a user would, then checks the report against what reached Kafka.
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from PIL import Image

from flywheel.auth import resolve_user
from flywheel.settings import TOPIC_FEEDBACK
from flywheel.v1 import events_pb2
from tests.conftest import BOB_API_KEY, ROOT, TEST_API_KEY, TEST_USER, free_port
from tests.kafka_helpers import consume

pytestmark = pytest.mark.engine


def run_simulate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", "simulate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def feedback_events(broker, completion_ids: set[str]) -> list:
    """Our events on the topic (those for our completions), once each by idempotency key."""
    events = consume(broker.bootstrap, TOPIC_FEEDBACK, events_pb2.FeedbackEvent.FromString,
                     lambda evs: completion_ids <= {e.completion_id for e in evs}, timeout_s=60)  # fmt: skip
    ours = {e.idempotency_key: e for e in events if e.completion_id in completion_ids}
    return list(ours.values())


def check_report(out, stdout: str) -> tuple[dict, list[dict]]:
    report = json.loads((out / "report.json").read_text())
    sent = [json.loads(line) for line in (out / "feedback.jsonl").read_text().splitlines()]
    png = out / "satisfaction.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
        image.verify()
    assert report["versions"], report
    for row in report["versions"]:
        assert isinstance(row["version"], str) and row["version"]
        assert 0 <= row["ci_low"] <= (row["rate"] or 0) <= row["ci_high"] <= 1
        assert row["events_accepted"] == row["thumbs_up"] + row["thumbs_down"] + row["comparisons"]
    assert sum(r["events_accepted"] for r in report["versions"]) == report["overall"]["events_accepted"]
    assert sum(w["answers"] for w in report["windows"]) == report["overall"]["answers"]
    assert report["overall"]["events_accepted"] == sum(f["accepted"] for f in sent)
    assert "satisfaction.png" in stdout and "feedback events accepted" in stdout
    return report, sent


def test_simulated_users_give_feedback_that_reaches_kafka(serving_server, feedback_server, broker, tmp_path):
    out = tmp_path / "sim"
    turns, users, seed = 12, 3, 4242
    result = run_simulate(
        "--serving-url", serving_server.url, "--feedback-url", feedback_server.url, "--preference", "concise:8",
        "--users", str(users), "--turns", str(turns), "--concurrency", "3", "--compare-share", "0.5",
        "--noise", "0.2", "--max-tokens", "12", "--seed", str(seed), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report, sent = check_report(out, result.stdout)
    assert report["turns"] == {"started": turns, "completed": turns, "failed": 0, "cut_short": 0}, report["errors"]
    assert report["errors"]["total"] == 0 and report["overall"]["events_accepted"] == turns
    assert report["auth"].startswith("anonymous") and report["config"]["api_keys"] == 0

    # every accepted event is on the topic once, from three distinct anonymous users
    events = feedback_events(broker, {f["completion_id"] for f in sent})
    assert len(events) == report["overall"]["events_accepted"]
    expected_users = {resolve_user(f"Bearer flywheel-simulated-user-{seed}-{i}", {}, True) for i in range(users)}
    assert {e.user_id for e in events} == expected_users
    kinds = Counter(e.WhichOneof("kind") for e in events)
    assert kinds["comparison"] == report["overall"]["comparisons"] > 0
    assert kinds["thumbs"] == report["overall"]["thumbs_up"] + report["overall"]["thumbs_down"] > 0
    by_version = Counter(e.policy_version for e in events if e.WhichOneof("kind") == "thumbs")
    assert by_version == Counter({r["version"]: r["thumbs_up"] + r["thumbs_down"] for r in report["versions"]
                                  if r["thumbs_up"] + r["thumbs_down"]})  # fmt: skip
    ups = sum(e.thumbs.rating == events_pb2.RATING_UP for e in events if e.WhichOneof("kind") == "thumbs")
    assert ups == report["overall"]["thumbs_up"]


def test_users_with_api_keys_are_those_users(serving_server, feedback_server, broker, tmp_path):
    out = tmp_path / "keys"
    result = run_simulate(
        "--serving-url", serving_server.url, "--feedback-url", feedback_server.url, "--preference", "polite",
        "--api-key", TEST_API_KEY, "--api-key", BOB_API_KEY, "--turns", "4", "--compare-share", "0",
        "--max-tokens", "8", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report, sent = check_report(out, result.stdout)
    assert report["config"]["users"] == 2 and report["auth"] == "api keys"
    assert TEST_API_KEY not in (out / "report.json").read_text()  # keys are never written out
    events = feedback_events(broker, {f["completion_id"] for f in sent})
    assert len(events) == 4 and {e.user_id for e in events} == {TEST_USER, "bob"}


def metric_total(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_writes_the_report_of_what_was_done(serving_server, feedback_server, tmp_path, stop):
    out = tmp_path / "interrupted"
    accepted = "flywheel_feedback_events_accepted_total"
    before = metric_total(feedback_server.url, accepted)
    args = ["--serving-url", serving_server.url, "--feedback-url", feedback_server.url, "--duration", "10m",
            "--max-tokens", "8", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "simulate", *args], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               # started as a shell starts a background job: SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # stopped once feedback was accepted (a turn stopped between its answer and its feedback sends none)
        while metric_total(feedback_server.url, accepted) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stdout + stderr
    report, _ = check_report(out, stdout)
    assert report["run"]["stopped"] == "interrupted" and report["overall"]["events_accepted"] > 0
    assert "Traceback" not in stderr


def test_an_unreachable_service_is_a_clear_error(feedback_server, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_simulate("--serving-url", closed, "--feedback-url", feedback_server.url, "--out", str(tmp_path))
    assert result.returncode == 1
    assert f"the serving service at {closed} is not reachable" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "report.json").exists()


def test_an_unknown_preference_is_a_clear_error(tmp_path):
    result = run_simulate("--preference", "kindness", "--out", str(tmp_path))
    assert result.returncode == 1 and "unknown preference 'kindness'" in result.stderr
    assert "Traceback" not in result.stderr
