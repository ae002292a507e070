"""Reading topics back in tests: everything from the start, decoded, until a condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable

from flywheel.kafka import make_consumer


def consume(
    bootstrap: str,
    topic: str,
    decode: Callable[[bytes], object],
    until: Callable[[list], bool],
    timeout_s: float = 30.0,
) -> list:
    """All records of `topic` from the earliest offset, decoded, once `until(records)` holds."""
    consumer = make_consumer(bootstrap, None, [topic], consumer_timeout_ms=500)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                records.append(decode(message.value))
            if until(records):
                return records
    finally:
        consumer.close()
    raise AssertionError(f"condition not met on {topic} within {timeout_s} s; got {len(records)} records")
