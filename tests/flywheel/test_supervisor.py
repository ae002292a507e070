"""`flywheel up` starts the system, serves, and stops cleanly: no process left behind."""

import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from flywheel.supervisor import wait_http_ready
from tests.conftest import free_port, serving_env

pytestmark = pytest.mark.engine


def test_up_serves_and_stops_without_orphans(tiny_model, tmp_path):
    serving_port, broker_port, feedback_port, grpc_port = free_port(), free_port(), free_port(), free_port()
    trainer_port, trainer_grpc_port = free_port(), free_port()
    env = serving_env(tmp_path, f"127.0.0.1:{broker_port}")
    up = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "up", "--model", str(tiny_model),
         "--serving-port", str(serving_port), "--broker-port", str(broker_port),
         "--feedback-port", str(feedback_port), "--feedback-grpc-port", str(grpc_port),
         "--trainer-port", str(trainer_port), "--trainer-grpc-port", str(trainer_grpc_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{serving_port}"
    try:
        # Children start in order; the trainer is the last.
        wait_http_ready(f"http://127.0.0.1:{trainer_port}/readyz", up, timeout_s=300)
        response = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        )
        assert response.status_code == 200
        family = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert "tansu" in names and "serve" in names and "feedback" in names and " train " in names
        assert len(family) >= 6  # broker, tansu, serving and its engine, feedback, trainer
        assert httpx.get(f"http://127.0.0.1:{trainer_port}/status").json()["round_running"] is False
        assert httpx.get(f"{url}/readyz").status_code == 200
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
        assert up.returncode == 0, output
        assert "all processes stopped" in output
        time.sleep(1)
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if up.poll() is None:  # the test failed early: stop it as a user would, then make sure
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(up.pid).children(recursive=True):
                    child.kill()
                up.kill()
