"""One trainer per dataset: the lock, and what `flywheel train` says when it is taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flywheel.broker import Broker
from tests.conftest import ROOT, free_port
from trainer.lock import DatasetLock, DatasetLocked, read_holder


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    first = DatasetLock(tmp_path / "trainer" / "trainer.lock")
    first.acquire("127.0.0.1:50053")
    with pytest.raises(DatasetLocked, match="one trainer per dataset") as refused:
        DatasetLock(tmp_path / "trainer" / "trainer.lock").acquire()
    assert refused.value.holder.pid == os.getpid()
    assert refused.value.holder.grpc_address == "127.0.0.1:50053"
    first.release()
    assert read_holder(tmp_path / "trainer" / "trainer.lock") is None
    second = DatasetLock(tmp_path / "trainer" / "trainer.lock")
    second.acquire()  # released: free again
    second.release()


def test_a_killed_holder_releases_the_lock(tmp_path):
    path = tmp_path / "trainer.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time; from trainer.lock import DatasetLock; "
         "DatasetLock(pathlib.Path(sys.argv[1])).acquire('x:1'); print('held', flush=True); time.sleep(60)", str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatasetLocked):
            DatasetLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = DatasetLock(path)
    lock.acquire()
    lock.release()


def _train_once(data_dir, model, kafka: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(data_dir), "FLYWHEEL_KAFKA_BOOTSTRAP": kafka}
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "train", "--once", "--model", str(model)],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=env,
    )  # fmt: skip


def test_train_once_exits_non_zero_with_the_reason_when_its_round_does_nothing(tiny_model, tmp_path):
    broker = Broker(port=free_port()).start()  # empty: no feedback, so no pairs
    try:
        result = _train_once(tmp_path / "data", tiny_model, broker.bootstrap)
    finally:
        broker.stop()
    assert result.returncode == 1, result.stderr[-2000:]
    shown = json.loads(result.stdout)  # the JSON still goes to stdout
    assert shown["outcome"] == "skipped" and shown["ran_by"] == "this process"
    assert "skipped: 0 training pairs" in result.stderr and "Traceback" not in result.stderr


def test_train_once_beside_another_once_says_the_dataset_is_taken(tiny_model, tmp_path):
    lock = DatasetLock(tmp_path / "data" / "trainer" / "trainer.lock")
    lock.acquire()  # a holder with no service to ask (another --once)
    try:
        result = _train_once(tmp_path / "data", tiny_model, f"127.0.0.1:{free_port()}")
    finally:
        lock.release()
    assert result.returncode == 1
    assert "one trainer per dataset" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
