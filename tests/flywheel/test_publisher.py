import time

from flywheel.broker import Broker
from flywheel.kafka import create_topics
from flywheel.publisher import BufferedPublisher
from tests.conftest import free_port
from tests.kafka_helpers import consume


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_events_are_delivered_in_order(broker):
    create_topics(broker.bootstrap, ["flywheel.test.publisher"])  # not a real topic: others decode those
    published = []
    publisher = BufferedPublisher(broker.bootstrap, "flywheel.test.publisher", 100, on_published=published.append)
    publisher.start()
    for i in range(20):
        assert publisher.publish("same-key", f"order-{i}".encode())
    _wait(lambda: sum(published) == 20)
    publisher.close()
    records = consume(
        broker.bootstrap, "flywheel.test.publisher", bytes, lambda r: sum(x.startswith(b"order-") for x in r) >= 20
    )
    ours = [r for r in records if r.startswith(b"order-")]
    assert ours == [f"order-{i}".encode() for i in range(20)]


def test_outage_buffers_then_drops_when_full_and_delivers_after_recovery():
    port = free_port()
    dropped, errors = [], []
    publisher = BufferedPublisher(
        f"127.0.0.1:{port}",
        "flywheel.completions.v1",
        capacity=5,
        on_dropped=dropped.append,
        on_error=lambda: errors.append(1),
        retry_backoff_s=0.2,
    ).start()
    for i in range(8):
        publisher.publish("k", f"outage-{i}".encode())
    assert sum(dropped) == 3  # the buffer holds 5; three were refused, none blocked
    _wait(lambda: errors)
    assert publisher.depth == 5
    broker = Broker(port=port).start()
    try:
        _wait(lambda: publisher.depth == 0, timeout=60)
        records = consume(broker.bootstrap, "flywheel.completions.v1", bytes, lambda r: len(r) >= 5)
        assert records == [f"outage-{i}".encode() for i in range(5)]
    finally:
        publisher.close()
        broker.stop()


def test_an_event_the_broker_can_never_take_is_dead_lettered_and_the_rest_go_on(broker):
    topic = "flywheel.test.publisher-dead-letters"
    create_topics(broker.bootstrap, [topic])
    published, dead = [], []
    publisher = BufferedPublisher(
        broker.bootstrap, topic, 100, on_published=published.append, on_dead_lettered=dead.append
    ).start()
    for value in (b"before", b"x" * 2_000_000, b"after"):  # past the producer's 1 MB request limit
        publisher.publish("k", value)
    try:
        _wait(lambda: sum(published) == 2 and publisher.depth == 0, timeout=20)
    finally:
        publisher.close()
    assert sum(dead) == 1
    [(key, value, reason)] = publisher.dead_letters
    assert key == b"k" and len(value) == 2_000_000 and "MessageSizeTooLarge" in reason
    records = consume(broker.bootstrap, topic, bytes, lambda r: b"after" in r)
    assert records == [b"before", b"after"]
