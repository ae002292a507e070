"""The ingestor's logic in seconds: a fake log behind kafka-python's KafkaConsumer, the real dataset store.

The same paths through the real broker are tests/trainer/test_trainer_process.py's.
"""

from __future__ import annotations

from unittest.mock import Mock

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from tests.trainer.synthetic import traffic
from trainer import ingest as ingest_module
from trainer.dataset import DatasetStore
from trainer.ingest import Ingestor
from trainer.metrics import TrainerMetrics


class FakeLog:
    """A broker's logs (one partition per topic) and a consumer over them, built on KafkaConsumer."""

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[bytes]] = {}
        self.positions: dict[TopicPartition, int] = {}

    def append(self, records: list[tuple[str, bytes]]) -> None:
        for topic, value in records:
            self.logs.setdefault(TopicPartition(topic, 0), []).append(value)

    def restart(self) -> None:
        """The local broker restarted: every log is gone."""
        self.logs = {}

    def consumer(self) -> Mock:
        consumer = Mock(spec=KafkaConsumer)
        consumer.partitions_for_topic.side_effect = lambda topic: {0}
        consumer.assign.side_effect = lambda partitions: self.positions.update({tp: 0 for tp in partitions})
        consumer.assignment.side_effect = lambda: set(self.positions)
        consumer.seek.side_effect = lambda tp, offset: self.positions.__setitem__(tp, offset)
        consumer.seek_to_beginning.side_effect = lambda *tps: self.positions.update({tp: 0 for tp in tps})
        consumer.highwater.side_effect = lambda tp: len(self.logs.get(tp, []))
        consumer.poll.side_effect = self.poll
        return consumer

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        batches = {}
        for tp, position in self.positions.items():
            log = self.logs.get(tp, [])
            if position < len(log):
                batches[tp] = [ConsumerRecord(tp.topic, 0, 0, offset, 0, 0, None, value, [], None, -1, len(value), -1)
                               for offset, value in enumerate(log[position:], start=position)]  # fmt: skip
                self.positions[tp] = len(log)
        return batches


def ingestor(log: FakeLog, store: DatasetStore) -> Ingestor:
    reader = Ingestor(log.consumer(), store, TrainerMetrics())
    reader.assign()
    return reader


def drain(reader: Ingestor) -> int:
    """Poll until three polls in a row bring nothing new (as catch_up settles); the events stored so far."""
    quiet = 0
    while quiet < 3:
        quiet = 0 if reader.poll(timeout_ms=0) else quiet + 1
    return reader.total.stored


def test_records_are_stored_once_and_a_restarted_trainer_goes_on_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module.time, "sleep", lambda s: None)
    log, store = FakeLog(), DatasetStore(tmp_path / "d.sqlite")
    records = traffic(20)
    log.append(records[:30])
    assert drain(ingestor(log, store)) == 30
    saved = store.positions()
    assert saved[(TOPIC_COMPLETIONS, 0)][0] + saved[(TOPIC_FEEDBACK, 0)][0] == 30
    log.append(records[30:])
    again = ingestor(log, store)  # a new process: positions come from the store
    assert drain(again) == len(records) - 30 and again.total.duplicates == 0
    assert sum(store.count_events().values()) == len(records)


def test_a_broker_that_restarted_with_new_logs_is_read_again_from_their_start(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module.time, "sleep", lambda s: None)
    log, store = FakeLog(), DatasetStore(tmp_path / "d.sqlite")
    first, later = traffic(10, seed=1), traffic(10, seed=2)
    log.append(first)
    reader = ingestor(log, store)
    drain(reader)
    log.restart()
    log.append(later)  # the new logs hold other records at the offsets already read
    drain(reader)
    assert sum(store.count_events().values()) == len(first) + len(later)


def test_an_empty_new_log_is_noticed_and_its_old_position_forgotten(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(ingest_module, "CHECK_WAIT_S", 0.0)
    log, store = FakeLog(), DatasetStore(tmp_path / "d.sqlite")
    log.append(traffic(5))
    reader = ingestor(log, store)
    drain(reader)
    log.restart()
    reader.poll(timeout_ms=0)
    assert store.positions() == {}  # else every recheck would look for the lost record again
    log.append(traffic(5, seed=3))
    drain(reader)
    assert sum(store.count_events().values()) == 20
