"""The relay: against the real broker (what it can never take is dead-lettered), and on a fake producer."""

from __future__ import annotations

from unittest.mock import Mock

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata, RecordMetadata

from feedback.metrics import FeedbackMetrics
from feedback.outbox import Outbox, OutboxLedger, OutboxRecord
from feedback.relay import Relay, RelayStats
from flywheel.metrics import render
from flywheel.settings import TOPIC_FEEDBACK
from flywheel.v1 import events_pb2
from tests.kafka_helpers import consume


def record(name: str, comment: str = "", key: str = "") -> OutboxRecord:
    key = key or name
    event = events_pb2.FeedbackEvent(event_id=name, idempotency_key=key, completion_id=name, user_id="relay-test")
    event.thumbs.rating = events_pb2.RATING_UP
    event.thumbs.comment = comment
    return OutboxRecord(name, key, name, "thumbs", event.SerializeToString())


def test_an_event_the_broker_can_never_take_is_dead_lettered_and_the_rest_are_published(broker, tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_pending=100)
    names = ["relay-dl-before", "relay-dl-huge", "relay-dl-after"]
    outbox.append_many([record(names[0]), record(names[1], "x" * 2_000_000), record(names[2])]).result(timeout=10)
    ledger, stats = OutboxLedger(path), RelayStats()
    try:
        assert Relay(ledger, broker.bootstrap, stats).publish_once() == 3
        assert ledger.unpublished(10) == []  # nothing is left to retry forever
        [(event_id, kind, reason)] = ledger.dead_letters()
        assert (event_id, kind) == ("relay-dl-huge", "thumbs") and "MessageSizeTooLarge" in reason
        retry = record("relay-dl-retry", "x" * 2_000_000, key="relay-dl-huge")
        [again] = outbox.append_many([retry]).result(timeout=10)
        assert again.duplicate and again.event_id == "relay-dl-huge"  # a client's retry is not refused anew
    finally:
        ledger.close()
        outbox.close()
    values = stats.snapshot()
    assert (values[RelayStats.PUBLISHED], values[RelayStats.DEAD_LETTERED]) == (2, 1)
    metrics = FeedbackMetrics()
    metrics.watch_relay(stats)
    assert 'flywheel_events_dead_lettered_total{producer="feedback"} 1.0' in render(metrics.registry)[0].decode()
    decode = events_pb2.FeedbackEvent.FromString
    events = consume(broker.bootstrap, TOPIC_FEEDBACK, decode, lambda evs: any(e.event_id == names[2] for e in evs))
    assert [e.event_id for e in events if e.event_id.startswith("relay-dl-")] == [names[0], names[2]]


def test_the_publish_latency_histogram_counts_each_batch_once():
    """Each observation was counted in every bucket above it and summed again at scrape: _count 15 after one."""
    from prometheus_client import generate_latest

    from feedback.metrics import FeedbackMetrics
    from feedback.relay import RelayStats

    stats, metrics = RelayStats(), FeedbackMetrics()
    metrics.watch_relay(stats)
    stats.observe_latency(0.003)
    stats.observe_latency(2.0)
    text = generate_latest(metrics.registry).decode()
    assert "flywheel_feedback_publish_latency_seconds_count 2.0" in text
    assert 'flywheel_feedback_publish_latency_seconds_bucket{le="+Inf"} 2.0' in text
    buckets = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("flywheel_feedback_publish_latency_seconds_bucket")]  # fmt: skip
    assert buckets == sorted(buckets) and buckets[0] <= 1.0 and 1.0 in buckets  # cumulative, one step per event


# -- the relay's logic on a fake producer built on kafka-python's KafkaProducer


class FakeBroker:
    """Acknowledges sends at increasing offsets; `fail` times out the next batch, `lose` restarts the log."""

    def __init__(self) -> None:
        self.offset = 0
        self.fail = False
        self.sent: list[tuple[bytes, bytes]] = []
        self.producers: list = []

    def lose(self) -> None:
        self.offset = 0

    def producer(self, bootstrap: str):
        producer = Mock(spec=KafkaProducer)

        def send(topic, key=None, value=None):
            future = Mock(spec=FutureRecordMetadata)
            if self.fail:
                future.get.side_effect = KafkaTimeoutError("no ack within the timeout")
                return future
            self.sent.append((key, value))
            tp = TopicPartition(topic, 0)
            future.get.return_value = RecordMetadata(topic, 0, tp, self.offset, 0, None, len(key), len(value), -1)
            self.offset += 1
            return future

        producer.send.side_effect = send
        self.producers.append(producer)
        return producer


def fake_relay(tmp_path, broker: FakeBroker) -> tuple[Relay, OutboxLedger, Outbox, RelayStats]:
    path = tmp_path / "outbox.sqlite"
    outbox, stats = Outbox(path, max_pending=100), RelayStats()
    ledger = OutboxLedger(path)
    relay = Relay(ledger, "127.0.0.1:1", stats, producer_factory=broker.producer, backoff_s=0, manage_topics=False)
    return relay, ledger, outbox, stats


def test_a_batch_the_broker_does_not_acknowledge_stays_and_is_sent_again_in_order(tmp_path):
    broker = FakeBroker()
    relay, ledger, outbox, stats = fake_relay(tmp_path, broker)
    names = [f"unacked-{i}" for i in range(3)]
    outbox.append_many([record(name) for name in names]).result(timeout=10)
    broker.fail = True
    assert relay.publish_once() == 3
    assert len(ledger.unpublished(10)) == 3 and stats.snapshot()[RelayStats.RETRIES] == 1
    broker.producers[0].close.assert_called()  # a failed producer is not reused
    broker.fail = False
    assert relay.publish_once() == 3
    assert ledger.unpublished(10) == [] and stats.snapshot()[RelayStats.PUBLISHED] == 3
    assert [key.decode() for key, _ in broker.sent] == names  # keyed by idempotency key, in order
    ledger.close()
    outbox.close()


def test_offsets_that_go_back_mean_the_broker_lost_acknowledged_events_and_they_are_replayed(tmp_path):
    broker = FakeBroker()
    relay, ledger, outbox, stats = fake_relay(tmp_path, broker)
    outbox.append_many([record(f"lost-{i}") for i in range(3)]).result(timeout=10)
    relay.publish_once()
    broker.lose()  # the local broker restarted: its log starts again at offset 0
    outbox.append_many([record("after-restart")]).result(timeout=10)
    relay.publish_once()
    assert stats.snapshot()[RelayStats.REPLAYED] == 3
    assert sorted(e.kafka_key for e in ledger.unpublished(10)) == ["lost-0", "lost-1", "lost-2"]
    relay.publish_once()
    assert [key.decode() for key, _ in broker.sent[-3:]] == ["lost-0", "lost-1", "lost-2"]
    assert ledger.unpublished(10) == []
    ledger.close()
    outbox.close()
