"""The trainer as operators run it: `flywheel train` on the real broker, killed and restarted.

Its own broker, so the counts are exact.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest

from flywheel.broker import Broker
from flywheel.channel import PolicyLog
from flywheel.kafka import make_producer
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2, trainer_pb2, trainer_pb2_grpc
from tests.conftest import ADMIN_METADATA, ROOT, free_port, start_trainer
from tests.trainer.synthetic import traffic

pytestmark = pytest.mark.slow
NO_AUTOMATIC_ROUNDS = {"FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK": "1000000"}


@pytest.fixture
def own_broker():
    broker = Broker(port=free_port()).start()
    yield broker
    broker.stop()


def produce(bootstrap: str, records: list[tuple[str, bytes]], pause_every: int = 0) -> None:
    producer = make_producer(bootstrap)
    for i, (topic, payload) in enumerate(records):
        producer.send(topic, value=payload)
        if pause_every and i % pause_every == pause_every - 1:
            producer.flush()
            time.sleep(0.05)
    producer.flush()
    producer.close()


def status(trainer) -> dict:
    return httpx.get(f"{trainer.url}/status", timeout=10).json()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def kill(trainer) -> None:
    os.killpg(trainer.process.pid, signal.SIGKILL)
    trainer.process.wait()


def test_a_trainer_killed_while_ingesting_loses_nothing_and_counts_nothing_twice(own_broker, taught_policy, tmp_path):
    trainer = start_trainer(tmp_path, own_broker.bootstrap, taught_policy, **NO_AUTOMATIC_ROUNDS)
    records = traffic(500)  # 1,000 events: 500 completions and 500 pieces of feedback
    producer = threading.Thread(target=produce, args=(own_broker.bootstrap, records, 50))
    producer.start()
    try:
        wait_for(lambda: status(trainer)["events_ingested"] >= 200, 60, "the first events")
        kill(trainer)
        producer.join()
        trainer.restart()
        wait_for(lambda: status(trainer)["events_ingested"] >= 1000, 90, "every event")
        time.sleep(2)  # anything replayed after the restart would land now
        assert status(trainer)["events_ingested"] == 1000
    finally:
        producer.join()
        trainer.stop()
    with sqlite3.connect(tmp_path / "data" / "trainer" / "dataset.sqlite") as db:
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
        keys = db.execute("SELECT COUNT(DISTINCT idempotency_key) FROM events WHERE kind != 'completion'").fetchone()
    assert kinds == {"completion": 500, "comparison": 167, "thumbs": 333}
    assert keys == (500,)


def test_a_trainer_killed_during_a_round_leaves_no_version_and_recovers(own_broker, taught_policy, tmp_path):
    trainer = start_trainer(tmp_path, own_broker.bootstrap, taught_policy, **NO_AUTOMATIC_ROUNDS)
    channel = grpc.insecure_channel(trainer.grpc)
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    try:
        produce(own_broker.bootstrap, traffic(200, seed=7))
        wait_for(lambda: status(trainer)["events_ingested"] >= 400, 60, "the traffic")
        assert stub.TriggerRound(trainer_pb2.TriggerRoundRequest(), timeout=10, metadata=ADMIN_METADATA).accepted
        wait_for(lambda: status(trainer)["round_running"], 30, "the round to start")
        time.sleep(8)  # into the reward model or PPO
        kill(trainer)
        store = tmp_path / "data" / "store"
        assert [p.name for p in store.iterdir() if not p.name.startswith(".tmp-")] == []

        trainer.restart()
        current = status(trainer)
        assert current["recent_rounds"][0]["outcome"] == "failed"
        assert "stopped during the round" in current["recent_rounds"][0]["reason"]
        assert current["published_version"] == ""
        assert not any(p.name.startswith(".tmp-") for p in store.iterdir())  # the half-written one is gone

        # Paused: the trainer does not start rounds of its own, but an operator's trigger still runs.
        assert stub.Pause(trainer_pb2.PauseRequest(), timeout=10, metadata=ADMIN_METADATA).paused
        assert status(trainer)["paused"]
        assert stub.TriggerRound(trainer_pb2.TriggerRoundRequest(), timeout=10, metadata=ADMIN_METADATA).accepted
        version = wait_for(lambda: status(trainer)["published_version"], 300, "a published version")
        assert not stub.Resume(trainer_pb2.ResumeRequest(), timeout=10, metadata=ADMIN_METADATA).paused
        metrics = httpx.get(f"{trainer.url}/metrics", timeout=10).text

        # The controls need the admin key: without it, or with another, nothing changes.
        for metadata in ((), [("authorization", "Bearer not-the-key")]):
            for call in (stub.Pause, stub.TriggerRound):
                request = trainer_pb2.PauseRequest() if call is stub.Pause else trainer_pb2.TriggerRoundRequest()
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=10, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not status(trainer)["paused"] and not status(trainer)["round_running"]

        # `train --once` beside the service asks it for the round: one trainer per dataset.
        once = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "train", "--once", "--reward-only", "--model", str(taught_policy)],
            capture_output=True, text=True, cwd=ROOT, timeout=300, env=trainer.env,
        )  # fmt: skip
        ran = json.loads(once.stdout)
        assert ran["ran_by"] == trainer.grpc, once.stderr[-2000:]
        assert ran["round"] == status(trainer)["recent_rounds"][0]["round"]
        assert ran["outcome"] == status(trainer)["recent_rounds"][0]["outcome"]
        assert once.returncode == (0 if ran["outcome"] in ("published", "reward_updated") else 1)
        second = subprocess.run(
            [*trainer.args[:-4], "--port", str(free_port()), "--grpc-port", str(free_port())],
            capture_output=True, text=True, cwd=ROOT, timeout=120, env=trainer.env,
        )  # fmt: skip
        assert second.returncode == 1 and "one trainer per dataset" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        shown = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", "status", "--trainer", trainer.grpc],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    finally:
        channel.close()
        trainer.stop()
    manifest = ModelStore(store).verify(version)
    announced: list[events_pb2.PolicyEvent] = []
    reader = PolicyLog(own_broker.bootstrap, announced.append, "test").start()  # as replicas read the topic
    try:
        wait_for(lambda: announced, 30, "the version's event on the policy topic")
    finally:
        reader.stop()  # it delivers the whole batch it polled first: a second event would show
    (envelope,) = announced
    event = envelope.published
    assert event.version == version
    assert {(f.path, f.sha256) for f in event.files} == {(f.path, f.sha256) for f in manifest.files}

    assert 'flywheel_trainer_rounds_total{outcome="published"} 1.0' in metrics
    assert "flywheel_trainer_feedback_to_policy_seconds_count 1.0" in metrics
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["publishedVersion"] == version


def test_a_broker_that_restarts_empty_is_read_again_from_its_start(own_broker, taught_policy, tmp_path):
    trainer = start_trainer(tmp_path, own_broker.bootstrap, taught_policy, **NO_AUTOMATIC_ROUNDS)
    try:
        produce(own_broker.bootstrap, traffic(50, seed=1))
        wait_for(lambda: status(trainer)["events_ingested"] >= 100, 60, "the first traffic")
        own_broker.kill()  # the local broker forgets every log
        own_broker.start()
        # More records than the trainer had read: a position kept blindly would skip the first 100.
        produce(own_broker.bootstrap, traffic(150, seed=2))
        wait_for(lambda: status(trainer)["events_ingested"] >= 400, 90, "every record of the new log")
        time.sleep(2)
        assert status(trainer)["events_ingested"] == 400
    finally:
        trainer.stop()


def caught_up_then_broker_restarted(broker, tmp_path):
    """An in-process ingestor that has stored 20 records, then the local broker restarted with no log."""
    from trainer.dataset import DatasetStore
    from trainer.ingest import Ingestor
    from trainer.metrics import TrainerMetrics

    produce(broker.bootstrap, traffic(10, seed=1))
    ingestor = Ingestor.connect(broker.bootstrap, DatasetStore(tmp_path / "dataset.sqlite"), TrainerMetrics())
    assert ingestor.catch_up(settle_s=2, timeout_s=60).stored == 20
    broker.kill()  # the local broker forgets every log
    broker.start()
    return ingestor


def test_a_broker_restarted_between_two_polls_is_read_from_its_start(own_broker, tmp_path):
    """The restart falls between two fetches and the new log is already longer than the old
    position: a fetch from that position would hand over the new log's tail, unnoticed."""
    ingestor = caught_up_then_broker_restarted(own_broker, tmp_path)
    store = ingestor.store
    try:
        produce(own_broker.bootstrap, traffic(150, seed=2))  # all of it before the next poll
        deadline = time.monotonic() + 60  # noticing the new log and its new partitions takes seconds
        while ingestor.total.stored < 320 and time.monotonic() < deadline:
            ingestor.poll(timeout_ms=500)
        ingestor.catch_up(settle_s=3, timeout_s=30)
        assert ingestor.total.stored == 320
        assert sum(store.count_events().values()) == 320
    finally:
        ingestor.close()


def test_a_broker_that_restarts_empty_is_noticed_once_not_at_every_recheck(own_broker, tmp_path, monkeypatch, caplog):
    """After a restart with a kept data dir and no new traffic, the old position was re-armed and
    "is a new log" logged (and the topic re-read) every 15 s for as long as the trainer ran."""
    import trainer.ingest as ingest_module
    from flywheel.kafka import create_topics

    monkeypatch.setattr(ingest_module, "RECHECK_S", 1.0)
    monkeypatch.setattr(ingest_module, "CHECK_WAIT_S", 1.0)
    ingestor = caught_up_then_broker_restarted(own_broker, tmp_path)
    try:
        create_topics(own_broker.bootstrap)  # as serving and feedback do when they start: empty logs
        caplog.clear()
        deadline = time.monotonic() + 10  # ten rechecks
        while time.monotonic() < deadline:
            ingestor.poll(timeout_ms=200)
        warnings = [r for r in caplog.records if "is a new log" in r.getMessage()]
        assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]  # once per partition with a position
        produce(own_broker.bootstrap, traffic(5, seed=2))
        ingestor.catch_up(settle_s=2, timeout_s=30)
        assert ingestor.total.stored == 30  # the new log's records are read from its start
    finally:
        ingestor.close()
