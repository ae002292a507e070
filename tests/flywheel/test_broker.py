import subprocess
import sys
import time

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


def test_a_killed_flywheel_broker_takes_tansu_with_it_so_a_restart_gets_the_port():
    # Tansu runs in a session of its own: it used to outlive its parent and hold the port for good.
    port = free_port()
    command = [sys.executable, "-m", "flywheel.cli", "broker", "--port", str(port)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30)
        first.kill()  # SIGKILL to `flywheel broker` alone
        first.wait()
        wait_until(lambda: not port_open("127.0.0.1", port), 10)
        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: port_open("127.0.0.1", port), 30)
            assert second.poll() is None
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
