"""The policy channel: events built one way, sent acks=all keyed by version, read in log order.

Fakes built on the real kafka-python classes; the live paths (trainer → replicas) are in
tests/serving/test_hot_swap.py and tests/serving/test_rollout_live.py.
"""

from __future__ import annotations

import math
import threading
from unittest.mock import Mock

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from flywheel import channel
from flywheel.settings import TOPIC_POLICY
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2


@pytest.fixture
def manifest(tmp_path):
    def write(tmp):
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "adapter_model.safetensors").write_bytes(b"weights")

    store = ModelStore(tmp_path / "store")
    metrics = {"kl": 0.25, "reward_gain": float("nan"), "note": "text"}
    return store.publish("v7", write, parent="v6", base_model="m", kind=channel.ADAPTER_KIND, metrics=metrics)


def test_a_publication_carries_the_manifest_files_and_numeric_metrics(manifest):
    event = channel.publication(manifest)
    assert (event.version, event.parent_version, event.kind, event.path) == ("v7", "v6", "lora", "v7")
    assert event.event_id and event.created_at.seconds > 0
    assert {(f.path, f.sha256, f.size) for f in event.files} == {(f.path, f.sha256, f.size) for f in manifest.files}
    assert dict(event.metrics) == {"kl": 0.25}  # NaN and text do not travel
    assert not any(math.isnan(v) for v in event.metrics.values())


def fake_producer(failures: int = 0) -> Mock:
    """A KafkaProducer whose sends are acknowledged, after `failures` timed-out ones."""
    producer = Mock(spec=KafkaProducer)
    outcomes = iter([KafkaTimeoutError("no ack")] * failures)

    def send(topic, key=None, value=None):
        future = Mock(spec=FutureRecordMetadata)
        future.get.side_effect = next(outcomes, None)
        return future

    producer.send.side_effect = send
    return producer


def test_the_sender_keys_by_version_waits_for_the_ack_and_reopens_after_a_failure(monkeypatch, manifest):
    producers = [fake_producer(failures=1), fake_producer()]
    opened = iter(producers)
    monkeypatch.setattr(channel, "make_producer", lambda bootstrap: next(opened))
    sender = channel.PolicySender("127.0.0.1:1")
    with pytest.raises(KafkaTimeoutError):
        sender.announce(manifest)
    producers[0].close.assert_called()  # a failed producer is dropped, not reused
    event = sender.announce(manifest)
    ((topic,), kwargs) = producers[1].send.call_args
    assert topic == TOPIC_POLICY and kwargs["key"] == b"v7"
    assert events_pb2.PolicyEvent.FromString(kwargs["value"]) == event
    assert producers[1].send.call_count == 1
    sender.close()
    producers[1].close.assert_called_once()


def decision(version: str, reason: str) -> events_pb2.PolicyEvent:
    return events_pb2.PolicyEvent(decision=events_pb2.RolloutDecision(event_id=reason, version=version, reason=reason))


def test_the_reader_hands_events_over_in_log_order_not_by_the_records_clocks(monkeypatch):
    """A replica whose clock runs behind wrote an older timestamp; its event still folds where the log has it."""
    part = TopicPartition(TOPIC_POLICY, 0)
    reasons = ["first", "second", "third"]
    records = [
        ConsumerRecord(topic=TOPIC_POLICY, partition=0, leader_epoch=0, offset=offset, timestamp=1_000 - offset * 100,
                       timestamp_type=0, key=b"v1", value=decision("v1", r).SerializeToString(), headers=[],
                       checksum=None, serialized_key_size=2, serialized_value_size=-1, serialized_header_size=-1)
        for offset, r in enumerate(reasons)
    ]  # fmt: skip
    handled: list[str] = []
    reader = channel.PolicyLog("127.0.0.1:1", lambda e: handled.append(e.decision.reason), "test")
    consumer = Mock(spec=KafkaConsumer)
    polls = iter([{part: records}])

    def poll(timeout_ms, max_records):
        batch = next(polls, {})
        if not batch:
            reader._stop.set()
        return batch

    consumer.poll.side_effect = poll
    monkeypatch.setattr(reader, "_connect", lambda: consumer)
    thread = threading.Thread(target=reader._run, daemon=True)
    thread.start()
    thread.join(10)
    assert handled == reasons
    assert reader.wait_caught_up(0)
