"""The trainer's loops keep going through a store that fails, and /healthz says so while they cannot."""

from __future__ import annotations

import sqlite3
import time
from unittest.mock import Mock

from fastapi.testclient import TestClient

import trainer.service as service_module
from flywheel.settings import TrainerSettings
from tests.conftest import free_port
from trainer.app import build_app
from trainer.ingest import Ingestor
from trainer.service import TrainerService


def test_a_failing_store_makes_ingestion_unhealthy_then_it_recovers(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "UNHEALTHY_AFTER_FAILURES", 2)
    failing = {"on": True}
    polls = []

    def poll(timeout_ms=500):
        polls.append(time.monotonic())
        if failing["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        time.sleep(0.05)
        return 0

    def connect(bootstrap, store, metrics):
        ingestor = Mock(spec=Ingestor)
        ingestor.poll.side_effect = poll
        return ingestor

    monkeypatch.setattr(service_module.Ingestor, "connect", staticmethod(connect))
    settings = TrainerSettings(data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    service = TrainerService(settings, base_model="unused")
    service.start()
    try:
        deadline = time.monotonic() + 20
        while not service.health() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ingestion failed 2 times in a row: OperationalError: database or disk is full" in service.health()
        app = build_app(settings, base_model="unused")
        app.state.service = service  # no lifespan: the routes over this service
        response = TestClient(app).get("/healthz")
        assert response.status_code == 503 and "disk is full" in response.json()["reason"]
        assert service.metrics.loop_errors.labels("ingest")._value.get() >= 2

        failing["on"] = False  # the disk has room again: the loop goes on by itself
        deadline = time.monotonic() + 20
        while service.health() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.health() == ""
        assert TestClient(app).get("/healthz").json() == {"status": "ok"}
    finally:
        service.stop()


def test_status_builds_the_pairs_again_only_when_the_dataset_changed(tmp_path, monkeypatch):
    from tests.trainer.synthetic import traffic

    built = []
    real = service_module.available_pairs
    monkeypatch.setattr(service_module, "available_pairs", lambda *a: built.append(1) or real(*a))
    service = TrainerService(TrainerSettings(data_dir=tmp_path), base_model="unused")
    try:
        service.dataset.ingest(traffic(12))
        first = service.status().pairs_available
        assert service.status().pairs_available == first and len(built) == 1  # polled again: nothing rebuilt
        service.dataset.ingest(traffic(12, seed=1))
        assert service.status().pairs_available > first and len(built) == 2
    finally:
        service.stop()
