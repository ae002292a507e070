"""Nothing accepted is lost: the broker, the feedback service or its relay SIGKILLed mid-stream.

Each test runs its own broker and feedback service, so the faults touch nothing else.
"""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from flywheel.broker import Broker
from flywheel.settings import TOPIC_FEEDBACK
from flywheel.tokens import FeedbackToken
from flywheel.v1 import events_pb2
from tests.conftest import TEST_API_KEY, TEST_SECRET, TEST_USER, feedback_env, free_port, start_feedback, stop_process
from tests.kafka_helpers import consume

pytestmark = pytest.mark.slow

TOTAL = 1_000
ALICE = {"Authorization": f"Bearer {TEST_API_KEY}"}
SIGNER = FeedbackToken(TEST_SECRET)


def body(i: int) -> dict:
    completion = f"durable-{i}"
    return {
        "completion_id": completion,
        "choice_index": 0,
        "rating": "up" if i % 3 else "down",
        "feedback_token": SIGNER.issue(completion, 0, 1, TEST_USER, "base"),
        "idempotency_key": f"key-{i}",
    }


def submit_until_accepted(client: httpx.Client, url: str, i: int, deadline: float) -> str:
    """A client that retries (same idempotency key) until it gets its 202."""
    while time.monotonic() < deadline:
        try:
            response = client.post(f"{url}/v1/feedback", json=body(i), headers=ALICE, timeout=10)
            if response.status_code == 202:
                return response.json()["event_id"]
            assert response.status_code in (429, 503), response.text
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"event {i} never accepted")


def wait_drained(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").json()["outbox_pending"] == 0:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("outbox not drained")


def run_stream(url_of, fault, workers: int = 8) -> dict[int, str]:
    """Submit TOTAL events from `workers` clients; call `fault()` once half are accepted."""
    accepted: dict[int, str] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + 300
    fired = threading.Event()

    def work(i: int) -> None:
        with httpx.Client() as client:
            event_id = submit_until_accepted(client, url_of(), i, deadline)
        with lock:
            accepted[i] = event_id
            if len(accepted) >= TOTAL // 2 and not fired.is_set():
                fired.set()
                fault()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(TOTAL)))
    return accepted


def test_broker_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path):
    broker = Broker(port=free_port()).start()
    server = start_feedback(tmp_path, feedback_env(tmp_path, broker.bootstrap))
    restarted = threading.Event()

    def kill_and_restart_later() -> None:
        broker.kill()

        def restart() -> None:
            time.sleep(3)
            broker.start()
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()

    try:
        accepted = run_stream(lambda: server.url, kill_and_restart_later)
        assert restarted.wait(30)
        wait_drained(server.url)
        events = consume(
            broker.bootstrap, TOPIC_FEEDBACK, events_pb2.FeedbackEvent.FromString,
            lambda evs: len({e.idempotency_key for e in evs}) >= TOTAL, timeout_s=120,
        )  # fmt: skip
        keys = [e.idempotency_key for e in events]
        assert len(set(keys)) == TOTAL
        assert len(keys) == TOTAL, "an idempotency key was published twice"
        assert {e.event_id for e in events} == set(accepted.values())
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "flywheel_feedback_relay_retries_total 0.0" not in metrics
    finally:
        stop_process(server.process)
        broker.stop()


def test_feedback_service_sigkill_mid_stream_loses_nothing(tmp_path):
    broker = Broker(port=free_port()).start()
    server = start_feedback(tmp_path, feedback_env(tmp_path, broker.bootstrap))

    def kill_and_restart() -> None:
        process = server.process
        process.kill()
        process.wait()
        threading.Thread(target=server.restart, daemon=True).start()

    try:
        accepted = run_stream(lambda: server.url, kill_and_restart)
        wait_drained(server.url)
        events = consume(
            broker.bootstrap, TOPIC_FEEDBACK, events_pb2.FeedbackEvent.FromString,
            lambda evs: set(accepted.values()) <= {e.event_id for e in evs}, timeout_s=120,
        )  # fmt: skip
        by_key: dict[str, set[str]] = {}
        for event in events:
            by_key.setdefault(event.idempotency_key, set()).add(event.event_id)
        assert len(by_key) == TOTAL
        # A redelivered event (killed between publish and mark) keeps its event id.
        assert all(len(ids) == 1 for ids in by_key.values())
    finally:
        stop_process(server.process)
        broker.stop()


def relay_pid(service_pid: int) -> int:
    """The relay: the feedback service's child started by multiprocessing's spawn."""
    children = Path(f"/proc/{service_pid}/task/{service_pid}/children").read_text().split()
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            return int(child)
    raise AssertionError(f"no relay among the children {children} of {service_pid}")


def test_a_relay_killed_on_its_own_is_started_again_and_publishes_what_was_accepted(tmp_path):
    broker = Broker(port=free_port()).start()
    server = start_feedback(tmp_path, feedback_env(tmp_path, broker.bootstrap))
    try:
        first = relay_pid(server.process.pid)
        os.kill(first, signal.SIGKILL)  # the OOM killer's way: the service itself lives on
        with httpx.Client() as client:
            accepted = {submit_until_accepted(client, server.url, i, time.monotonic() + 60) for i in range(20)}
        wait_drained(server.url, timeout=60)  # published by the new relay
        events = consume(broker.bootstrap, TOPIC_FEEDBACK, events_pb2.FeedbackEvent.FromString,
                         lambda evs: accepted <= {e.event_id for e in evs}, timeout_s=60)  # fmt: skip
        assert accepted <= {e.event_id for e in events}
        assert relay_pid(server.process.pid) != first
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "flywheel_feedback_relay_restarts_total 1.0" in metrics
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        stop_process(server.process)
        broker.stop()
