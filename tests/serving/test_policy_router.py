"""The router, where full weights go, and the chat service's re-pick when the engine's weights changed
under a waiting request."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from flywheel.channel import ADAPTER_KIND, FULL_KIND
from flywheel.errors import APIError
from flywheel.rollout import RolloutState
from flywheel.settings import ServingSettings
from serving.chat import ChatService
from serving.metrics import ServingMetrics
from serving.policy import PolicyRouter, ServedPolicy
from serving.weights import wanted_weights


def service(router: PolicyRouter) -> ChatService:
    return ChatService(None, None, ServingSettings(), router, None, None, ServingMetrics())


def waiting(policy: ServedPolicy, pinned: str | None = None, choices=()) -> SimpleNamespace:
    request = SimpleNamespace(policy_version=pinned)
    return SimpleNamespace(policy=policy, request=request, user_id="user-1", choice_policies=list(choices))


def test_a_request_whose_version_went_with_the_old_weights_is_served_by_what_is_there_now():
    base, full = ServedPolicy("base"), ServedPolicy("v1-full")
    router = PolicyRouter(stable=full)  # after the reload: the merged weights only
    prep = waiting(base)
    service(router)._still_served(prep)
    assert prep.policy is full


def test_a_pinned_version_that_went_is_a_404_never_another_version():
    router = PolicyRouter(stable=ServedPolicy("v1-full"))
    with pytest.raises(APIError) as raised:
        service(router)._still_served(waiting(ServedPolicy("base"), pinned="base"))
    assert raised.value.status_code == 404 and "'base' was unloaded" in str(raised.value)


def test_a_comparison_whose_side_went_compares_what_is_served_now():
    full = ServedPolicy("v1-full")
    router = PolicyRouter(stable=full)
    prep = waiting(full, choices=[ServedPolicy("base"), ServedPolicy("lora-1")])
    service(router)._still_served(prep)
    assert [p.version for p in prep.choice_policies] == ["v1-full", "v1-full"]


def test_requests_wait_while_the_router_is_closed():
    async def run() -> list[str]:
        router, seen = PolicyRouter(stable=ServedPolicy("base")), []
        router.close()

        async def request() -> None:
            await router.wait_open()
            seen.append("served")

        task = asyncio.create_task(request())
        await asyncio.sleep(0.05)
        seen.append("reloaded")
        router.open()
        await task
        return seen

    assert asyncio.run(run()) == ["reloaded", "served"]


def test_full_weights_go_to_the_canarys_share_of_replicas_and_the_stables_everywhere_else():
    kinds = {"v1-full": FULL_KIND, "v2-full": FULL_KIND, "v3": ADAPTER_KIND}.get
    state = RolloutState(stable="v1-full", canary="v2-full", canary_fraction=0.25)
    assert wanted_weights(state, kinds, set(), bucket=0.1, base="base") == "v2-full"
    assert wanted_weights(state, kinds, set(), bucket=0.3, base="base") == "v1-full"
    assert wanted_weights(state, kinds, {"v2-full"}, bucket=0.1, base="base") == "v1-full"  # a refused canary
    adapter_canary = RolloutState(stable="v1-full", canary="v3", canary_fraction=1.0)
    assert wanted_weights(adapter_canary, kinds, set(), bucket=0.1, base="base") == "v1-full"
    assert wanted_weights(RolloutState(stable="v3"), kinds, set(), bucket=0.1, base="base") == "base"
