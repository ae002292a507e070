"""Helpers shared by every producer of protobuf events: ids, timestamps, schema version."""

from __future__ import annotations

import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

SCHEMA_VERSION = 1
# The longest prompt an imported pair carries (feedback's import route; the AI judge keeps to it too).
MAX_PAIR_PROMPT_CHARS = 50_000


def new_event_id() -> str:
    return uuid.uuid4().hex


def timestamp_now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp
