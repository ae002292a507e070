"""The policy receiver's logic in seconds, on a fake engine built on vLLM's AsyncLLM.

What it loads, refuses, routes and announces for each policy event; the same paths through a real
vLLM engine and broker are tests/serving/test_hot_swap.py and tests/serving/test_rollout_live.py.
"""

from __future__ import annotations

import asyncio
import json
from unittest.mock import Mock

import pytest
import torch
from safetensors.torch import save_file
from vllm.v1.engine.async_llm import AsyncLLM

from flywheel.channel import ADAPTER_KIND, decision_event, publication, published_event
from flywheel.settings import ServingSettings
from flywheel.store import ModelStore
from flywheel.v1 import events_pb2
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.rollout import PolicyReceiver

Action = events_pb2.RolloutAction


def adapter(store: ModelStore, version: str, rank: int = 4):
    def write(tmp):
        (tmp / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 8}))
        save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(rank, 8)},
                  str(tmp / "adapter_model.safetensors"))  # fmt: skip

    return store.publish(version, write, parent="base", base_model="m", kind=ADAPTER_KIND)


def fake_engine(refuse: set[str] = frozenset()) -> Mock:
    engine = Mock(spec=AsyncLLM)
    engine.added, engine.generated = [], []

    async def add_lora(lora):
        if any(lora.lora_name.startswith(v + "-") for v in refuse):
            raise RuntimeError("bad adapter")
        engine.added.append(lora)
        return True

    async def generate(prompt, sampling, request_id, lora_request=None):
        engine.generated.append((request_id, lora_request))
        yield Mock()

    engine.add_lora.side_effect = add_lora
    engine.generate = generate
    return engine


@pytest.fixture
def replica(tmp_path):
    def make(refuse=frozenset()):
        settings = ServingSettings(data_dir=tmp_path, canary_fraction=0.25, max_lora_rank=8, replica_id="r1")
        store = ModelStore(tmp_path / "store")
        engine = fake_engine(refuse)
        receiver = PolicyReceiver(engine, PolicyRouter(ServedPolicy("base")), store, settings, ServingMetrics())
        asyncio.run(receiver.start(follow=False))
        return receiver, store, engine

    return make


def run(receiver: PolicyReceiver, *events: events_pb2.PolicyEvent) -> None:
    async def go():
        for event in events:
            await receiver.handle(event)

    asyncio.run(go())


def test_a_published_version_is_checked_loaded_under_a_fresh_name_warmed_up_and_made_the_canary(replica):
    receiver, store, engine = replica()
    v1, v2 = adapter(store, "v1"), adapter(store, "v2")
    run(receiver, published_event(publication(v1)))
    assert receiver.router.canary.version == "v1" and receiver.router.canary_fraction == 0.25
    assert [lora.lora_path for lora in engine.added] == [str(store.path("v1"))]
    assert [lora for _, lora in engine.generated] == engine.added  # warmed up on its own adapter
    run(receiver, published_event(publication(v2)), published_event(publication(v1)))  # v1 again: a replay
    assert receiver.router.canary.version == "v2" and receiver.state.fallback == "v1"
    names = [lora.lora_name for lora in engine.added]
    assert len(names) == len(set(names)) == 2 and len({lora.lora_int_id for lora in engine.added}) == 2


def test_a_version_whose_files_do_not_match_the_manifest_is_refused_and_never_reaches_the_engine(replica):
    receiver, store, engine = replica()
    good, bad = adapter(store, "good"), adapter(store, "bad")
    (store.path("bad") / "adapter_model.safetensors").write_bytes(b"not the file the manifest hashed")
    run(receiver, published_event(publication(good)), published_event(publication(bad)))
    assert "bad" in receiver.refused and "bad" in receiver.state.retired
    assert receiver.router.canary.version == "good"  # the version users had stays
    assert [lora.lora_path for lora in engine.added] == [str(store.path("good"))]


def test_an_adapter_above_the_allowed_rank_or_one_the_engine_rejects_is_refused_with_its_reason(replica):
    receiver, store, _ = replica(refuse={"broken"})
    run(receiver, published_event(publication(adapter(store, "wide", rank=16))),
        published_event(publication(adapter(store, "broken"))))  # fmt: skip
    assert "rank 16" in receiver.refused["wide"] and "engine refused" in receiver.refused["broken"]
    assert receiver.router.canary is None and receiver.router.stable.version == "base"
    refused = {s.labels["reason"]: s.value for s in receiver.metrics.refused_versions.collect()[0].samples
               if s.name.endswith("_total")}  # fmt: skip
    assert refused == {"rank": 1.0, "load_failed": 1.0}


def test_promote_and_rollback_decisions_move_users(replica):
    receiver, store, _ = replica()
    run(receiver, published_event(publication(adapter(store, "v1"))))
    promote = decision_event(Action.ROLLOUT_ACTION_PROMOTE, "v1", state=receiver.state, reason="better",
                             decided_by="controller")  # fmt: skip
    run(receiver, promote, published_event(publication(adapter(store, "v2"))))
    assert receiver.router.stable.version == "v1" and receiver.router.canary.version == "v2"
    rollback = decision_event(Action.ROLLOUT_ACTION_ROLLBACK, "v2", state=receiver.state, reason="worse",
                              decided_by="controller")  # fmt: skip
    run(receiver, rollback)
    assert receiver.router.canary is None and receiver.router.pick_version("anyone").version == "v1"
    assert receiver.state.retired["v2"] == "rolled back: worse"


def test_operators_get_a_message_not_an_exception_for_what_cannot_be_done(replica):
    receiver, store, _ = replica()
    ok, message = asyncio.run(receiver.promote())
    assert not ok and "no canary" in message
    ok, message = asyncio.run(receiver.set_canary_fraction(1.5))
    assert not ok and "between 0 and 1" in message
    run(receiver, published_event(publication(adapter(store, "v1"))))
    ok, message = asyncio.run(receiver.set_canary_fraction(0.75))
    assert ok and receiver.router.canary_fraction == 0.75
    status = receiver.status()
    assert status["canary_version"] == "v1" and {entry["version"] for entry in status["loaded"]} == {"base", "v1"}
