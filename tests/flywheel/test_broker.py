from kafka import KafkaAdminClient

from flywheel.broker import Broker, port_open
from flywheel.kafka import make_producer
from flywheel.settings import TOPICS
from tests.conftest import free_port
from tests.kafka_helpers import consume


def test_broker_creates_the_topics_and_carries_messages(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert set(TOPICS) <= set(admin.list_topics())
    finally:
        admin.close()
    producer = make_producer(broker.bootstrap)
    producer.send("flywheel.policy.v1", key=b"k", value=b"hello").get(timeout=10)
    producer.close()
    records = consume(broker.bootstrap, "flywheel.policy.v1", bytes, lambda r: b"hello" in r)
    assert b"hello" in records


def test_broker_stops_by_pid():
    broker = Broker(port=free_port()).start(create=False)
    assert port_open(broker.host, broker.port)
    broker.stop()
    assert broker.process.poll() is not None
    assert not port_open(broker.host, broker.port)
