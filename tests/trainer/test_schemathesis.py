"""Property-based requests from the trainer's HTTP API's OpenAPI schema (status, history, health): no 5xx."""

import re

import pytest

from tests.conftest import run_schemathesis
from tests.trainer.conftest import start_trainer

pytestmark = pytest.mark.slow


def test_no_server_errors(tiny_model, broker, tmp_path):
    trainer = start_trainer(tmp_path, broker.bootstrap, tiny_model, FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK="1000000")
    try:
        result = run_schemathesis(f"{trainer.url}/openapi.json", max_examples=60)
    finally:
        trainer.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and int(generated.group(1)) >= 20, result.stdout[-3000:]  # it really asked
