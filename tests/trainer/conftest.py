"""Fixtures for the trainer: a tiny policy that writes both kinds of answer, fast settings, processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from flywheel.settings import TrainerSettings
from flywheel.store import Manifest, ModelStore
from tests.conftest import ADMIN_KEY, free_port, start_process, stop_process, wait_ready
from tests.trainer.synthetic import build_taught_policy
from trainer.context import RoundContext
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics

# Small enough for a round on the tiny policy in about a minute, large enough to learn the rule.
FAST = {
    "reward": {"epochs": 3, "lora_rank": 0, "learning_rate": 1e-3, "accuracy_floor": 0.9},
    "ppo": {"steps": 8, "batch_size": 16, "response_length": 24, "learning_rate": 1e-3, "kl_coef": 0.05,
            "temperature": 1.0},
    "gates": {"eval_prompts": 16, "kl_budget": 50.0, "length_band": 3.0},
}  # fmt: skip


ADMIN_METADATA = [("authorization", f"Bearer {ADMIN_KEY}")]  # the trainer's control calls need the admin key


def fast_env() -> dict[str, str]:
    """FAST as FLYWHEEL_SECTION__FIELD variables, for trainer processes."""
    return {
        f"FLYWHEEL_{section.upper()}__{name.upper()}": str(value)
        for section, fields in FAST.items()
        for name, value in fields.items()
    }


def fast_settings(data_dir: Path, **overrides) -> TrainerSettings:
    sections = {name: {**fields, **overrides.pop(name, {})} for name, fields in FAST.items()}
    return TrainerSettings(data_dir=data_dir, torch_threads=2, **sections, **overrides)


@pytest.fixture(scope="session")
def taught_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_taught_policy(tmp_path_factory.mktemp("policy") / "taught")


@dataclass
class TrainerProcess:
    url: str
    grpc: str
    process: subprocess.Popen
    log_path: Path
    args: list[str]
    env: dict[str, str]

    def restart(self) -> None:
        self.process = start_process(self.args, self.env, self.log_path)
        wait_ready(self.url, self.process, self.log_path, timeout=120)

    def stop(self) -> None:
        stop_process(self.process)


def start_trainer(tmp: Path, kafka: str, model: Path, port: int | None = None, grpc_port: int | None = None,
                  **extra: str) -> TrainerProcess:  # fmt: skip
    """The one way tests start a trainer process (`flywheel train`, fast settings; `extra`: more env)."""
    port, grpc_port = port or free_port(), grpc_port or free_port()
    env = dict(os.environ)
    env.update(fast_env())
    env.update({"FLYWHEEL_DATA_DIR": str(tmp / "data"), "FLYWHEEL_KAFKA_BOOTSTRAP": kafka,
                "FLYWHEEL_ADMIN_KEY": ADMIN_KEY, **extra})  # fmt: skip
    args = [sys.executable, "-m", "flywheel.cli", "--log-level", "debug", "train", "--model", str(model),
            "--port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    trainer = TrainerProcess(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", None, tmp / "trainer.log", args, env)
    trainer.restart()
    return trainer


def round_context(tmp_path, model, records, **overrides) -> tuple[RoundContext, list]:
    """A RoundContext by hand on fast settings, its dataset holding `records`; and what it announced."""
    settings = fast_settings(tmp_path / "data", **overrides)
    store = DatasetStore(settings.dataset_path)
    store.ingest(records)
    announced: list[Manifest] = []  # what the round asked the policy channel to announce
    ctx = RoundContext(
        settings, str(model), store, ModelStore(settings.store_dir), ModelStore(settings.reward_store_dir),
        announced.append, TrainerMetrics(),
    )  # fmt: skip
    return ctx, announced
