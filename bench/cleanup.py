"""Benchmarks start brokers and servers in process groups of their own: make every exit path stop them.

SIGTERM (a `timeout`, `kill`, a CI runner) and SIGHUP (a closed terminal) end Python without
running `finally` blocks, which left a benchmark's broker and serving running; as SystemExit they
unwind like Ctrl-C does, through every `finally` that stops a child.
"""

from __future__ import annotations

import signal
import sys


def stop_on_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
