"""Init container: wait until Kafka has Flywheel's three topics, then exit 0 (or 1 on timeout).

On a cluster the topics are Strimzi `KafkaTopic`s (replication 3, min.insync.replicas 2). A
service started before the Topic Operator made them would create them itself with one partition
and one replica (the local broker's way), and acks=all writes would then fail against
min.insync.replicas 2. Reads FLYWHEEL_KAFKA_BOOTSTRAP; needs no Kubernetes API rights.
"""

import logging
import os
import sys
import time

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from flywheel.settings import TOPICS

log = logging.getLogger("wait-for-topics")


def missing_topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000, bootstrap_timeout_ms=5_000)
    try:
        return set(TOPICS) - set(admin.list_topics())
    finally:
        admin.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    bootstrap = os.environ.get("FLYWHEEL_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    deadline = time.monotonic() + float(os.environ.get("WAIT_FOR_TOPICS_TIMEOUT_S", "900"))
    while True:
        try:
            missing = missing_topics(bootstrap)
        except KafkaError as exc:
            missing = set(TOPICS)
            log.info("Kafka at %s not answering yet (%s)", bootstrap, type(exc).__name__)
        if not missing:
            log.info("topics present on %s: %s", bootstrap, ", ".join(TOPICS))
            return 0
        if time.monotonic() > deadline:
            log.error("gave up: topics %s still missing on %s", sorted(missing), bootstrap)
            return 1
        log.info("waiting for topics %s on %s", sorted(missing), bootstrap)
        time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())
