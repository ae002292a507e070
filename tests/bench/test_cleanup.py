"""A benchmark stopped by SIGTERM midway stops the children it started (they run in groups of their own)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.conftest import ROOT, free_port

SCRIPT = """
import sys, time
from bench.cleanup import stop_on_signals
from flywheel.broker import Broker
stop_on_signals()
broker = Broker(port=int(sys.argv[1])).start()
try:
    print(broker.process.pid, flush=True)
    time.sleep(120)
finally:
    broker.stop()
"""


def test_sigterm_midway_runs_the_finally_that_stops_the_broker():
    bench = subprocess.Popen([sys.executable, "-c", SCRIPT, str(free_port())], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        broker_pid = int(bench.stdout.readline())
        assert psutil.pid_exists(broker_pid)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while psutil.pid_exists(broker_pid) and psutil.Process(broker_pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the broker outlived the benchmark"
            time.sleep(0.1)
    finally:
        bench.kill()
