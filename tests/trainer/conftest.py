"""Fixtures for the trainer: a tiny policy that writes both kinds of answer, fast settings, round contexts.

Trainer processes (`start_trainer`) start from tests/conftest.py, as serving and feedback do."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.settings import TrainerSettings
from flywheel.store import Manifest, ModelStore
from tests.conftest import FAST
from tests.trainer.synthetic import build_taught_policy
from trainer.context import RoundContext
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics


def fast_settings(data_dir: Path, **overrides) -> TrainerSettings:
    sections = {name: {**fields, **overrides.pop(name, {})} for name, fields in FAST.items()}
    return TrainerSettings(data_dir=data_dir, torch_threads=2, **sections, **overrides)


@pytest.fixture(scope="session")
def taught_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_taught_policy(tmp_path_factory.mktemp("policy") / "taught")


def round_context(tmp_path, model, records, **overrides) -> tuple[RoundContext, list]:
    """A RoundContext by hand on fast settings, its dataset holding `records`; and what it announced."""
    settings = fast_settings(tmp_path / "data", **overrides)
    store = DatasetStore(settings.dataset_path)
    store.ingest(records)
    announced: list[Manifest] = []  # what the round asked the policy channel to announce
    # No roll-out event reaches a hand-built round: it trains from the newest published version.
    ctx = RoundContext(
        settings, str(model), store, ModelStore(settings.store_dir), ModelStore(settings.reward_store_dir),
        announced.append, parent=lambda: None, metrics=TrainerMetrics(),
    )  # fmt: skip
    return ctx, announced
