"""Which version a round trains from: the roll-out's word (RolloutController.parent, which starts from
the snapshot on disk), else the newest published version."""

from __future__ import annotations

from flywheel.channel import ADAPTER_KIND, FULL_KIND
from flywheel.rollout import RolloutState, write_snapshot
from flywheel.settings import TrainerSettings
from flywheel.store import ModelStore
from tests.trainer.conftest import fast_settings
from trainer.context import RoundContext
from trainer.dataset import DatasetStore
from trainer.metrics import TrainerMetrics
from trainer.rollout import RolloutController
from trainer.round import current_policy


def publish(store: ModelStore, version: str, kind: str = ADAPTER_KIND, parent: str = "base") -> None:
    store.publish(version, lambda tmp: (tmp / "adapter_model.safetensors").write_bytes(version.encode()),
                  parent=parent, base_model="m", kind=kind)  # fmt: skip


def starting_controller(settings: TrainerSettings, dataset: DatasetStore, policies: ModelStore) -> RolloutController:
    """The trainer's roll-out controller as a trainer starts it: it has read the snapshot (no broker here)."""
    return RolloutController(settings, dataset, policies, TrainerMetrics())


def context(tmp_path, parent=None) -> RoundContext:
    """Versions v1-v3 and v2-full (merged from v2); `parent` by default a starting controller's."""
    settings = fast_settings(tmp_path / "data")
    policies = ModelStore(settings.store_dir)
    for version in ("v1", "v2", "v3"):
        publish(policies, version)
    publish(policies, "v2-full", kind=FULL_KIND, parent="v2")
    dataset = DatasetStore(settings.dataset_path)
    parent = parent or starting_controller(settings, dataset, policies).parent
    return RoundContext(settings, "m", dataset, policies, ModelStore(settings.reward_store_dir),
                        lambda manifest: None, parent=parent)  # fmt: skip


def test_the_round_trains_from_the_version_the_rollout_names(tmp_path):
    ctx = context(tmp_path, parent=lambda: "v1")
    write_snapshot(ctx.policies.root, RolloutState(stable="v3", seen=("e1",)))  # an older view on disk
    assert current_policy(ctx) == ("v1", ctx.policies.path("v1"))


def test_a_merged_version_trains_on_from_the_adapter_it_came_from(tmp_path):
    ctx = context(tmp_path, parent=lambda: "v2-full")
    assert current_policy(ctx) == ("v2", ctx.policies.path("v2"))


def test_without_a_rollout_the_snapshot_then_the_newest_version_decide(tmp_path):
    ctx = context(tmp_path)
    assert current_policy(ctx)[0] == "v2"  # the newest published, v2-full, was merged from v2
    write_snapshot(ctx.policies.root, RolloutState(stable="v3", seen=("e1",)))
    ctx.parent = starting_controller(ctx.settings, ctx.dataset, ctx.policies).parent  # a trainer starting now
    assert current_policy(ctx)[0] == "v3"


def test_before_any_rollout_event_the_controller_defers_to_the_store(tmp_path):
    ctx = context(tmp_path, parent=lambda: None)
    assert current_policy(ctx)[0] == "v2"  # newest is v2-full, merged from v2
