"""A roll-out steered by live feedback, through every real part.

Serving (tiny model), the feedback service and the trainer (its roll-out controller) share a data
dir, as under `flywheel up`. Users chat; their feedback tokens go back to the feedback service with
thumbs that favour (then disfavour) the canary; the controller must promote the first canary and
roll back the second, and serving must obey both decisions. A third canary is judged head to head:
compare mode answers one prompt with both versions, and comparisons alone promote it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from flywheel.broker import Broker
from flywheel.channel import announce
from flywheel.store import ModelStore
from tests.conftest import feedback_env, free_port, start_feedback, start_trainer, stop_process
from tests.serving.versions import PROMPT, make_lora_version, start_replica, wait_policy

pytestmark = pytest.mark.slow


def chat_and_rate(serving_url: str, feedback_url: str, favoured: str, users: int) -> dict[str, int]:
    """Each user chats once and rates the answer: up when it came from `favoured`, down otherwise."""
    served: dict[str, int] = {}
    for _ in range(users):
        key = f"user-{uuid.uuid4().hex[:10]}"  # anonymous mode: each key is its own user
        headers = {"Authorization": f"Bearer {key}"}
        body = {"messages": PROMPT, "max_tokens": 8}
        reply = httpx.post(f"{serving_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        version = answer["policy_version"]
        served[version] = served.get(version, 0) + 1
        rating = {
            "completion_id": answer["id"],
            "choice_index": 0,
            "rating": "up" if version == favoured else "down",
            "feedback_token": answer["choices"][0]["feedback_token"],
        }
        accepted = httpx.post(f"{feedback_url}/v1/feedback", json=rating, headers=headers, timeout=30)
        assert accepted.status_code == 202, accepted.text
    return served


def compare_and_prefer(serving_url: str, feedback_url: str, favoured: str, versions: set[str]) -> bool:
    """One user asks for a head-to-head answer pair and prefers the `favoured` version's answer.

    False once there is no canary left to compare with (the controller has decided).
    """
    headers = {"Authorization": f"Bearer user-{uuid.uuid4().hex[:10]}"}
    body = {"messages": PROMPT, "max_tokens": 8, "n": 2, "compare_versions": True, "temperature": 0}
    reply = httpx.post(f"{serving_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    if reply.status_code == 400 and "no canary" in reply.text:
        return False
    assert reply.status_code == 200, reply.text
    choices = reply.json()["choices"]
    assert {c["policy_version"] for c in choices} == versions
    winner = next(c["index"] for c in choices if c["policy_version"] == favoured)
    comparison = {
        "completion_id": reply.json()["id"],
        "feedback_tokens": [c["feedback_token"] for c in choices],
        "preferred_choice_index": winner,
        "rejected_choice_index": 1 - winner,
    }
    accepted = httpx.post(f"{feedback_url}/v1/comparisons", json=comparison, headers=headers, timeout=30)
    assert accepted.status_code == 202, accepted.text
    return True


def test_live_feedback_promotes_a_better_canary_and_rolls_back_a_worse_one(tiny_model, tmp_path):
    broker = Broker(port=free_port()).start()
    processes = []
    try:
        server = start_replica(tiny_model, tmp_path, broker.bootstrap)
        processes.append(server.process)
        feedback = start_feedback(tmp_path, feedback_env(tmp_path, broker.bootstrap))
        processes.append(feedback.process)
        trainer = start_trainer(
            tmp_path, broker.bootstrap, tiny_model,
            FLYWHEEL_FEEDBACK_TOKEN_SECRET=server.env["FLYWHEEL_FEEDBACK_TOKEN_SECRET"],
            FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK="1000000",  # no training rounds: only the controller acts
            FLYWHEEL_ROLLOUT__MIN_SAMPLES="8", FLYWHEEL_ROLLOUT__MIN_COMPARISONS="8",
            FLYWHEEL_ROLLOUT__CHECK_INTERVAL_S="1",
        )  # fmt: skip
        processes.append(trainer.process)
        store = ModelStore(Path(server.env["FLYWHEEL_DATA_DIR"]) / "store")

        good = make_lora_version(tiny_model, store, "c-good", seed=301)
        announce(broker.bootstrap, good)
        wait_policy(server, lambda s: s["canary_version"] == "c-good", "c-good as canary")
        served = chat_and_rate(server.url, feedback.url, favoured="c-good", users=40)
        assert served.get("c-good", 0) >= 8 and served.get("base", 0) >= 8, served
        status = wait_policy(server, lambda s: s["stable_version"] == "c-good", "c-good promoted", timeout_s=90)
        assert status["canary_version"] == ""

        bad = make_lora_version(tiny_model, store, "c-bad", seed=302, parent="c-good")
        announce(broker.bootstrap, bad)
        wait_policy(server, lambda s: s["canary_version"] == "c-bad", "c-bad as canary")
        chat_and_rate(server.url, feedback.url, favoured="c-good", users=40)
        status = wait_policy(server, lambda s: "c-bad" in s["retired"], "c-bad rolled back", timeout_s=90)
        assert status["retired"]["c-bad"].startswith("rolled back: canary worse")
        assert (status["stable_version"], status["canary_version"]) == ("c-good", "")

        # Every user now gets the promoted version.
        for _ in range(5):
            reply = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 4},
                               headers={"Authorization": f"Bearer u-{uuid.uuid4().hex}"}, timeout=60)  # fmt: skip
            assert reply.json()["policy_version"] == "c-good"

        # Head to head: compare mode answers with both versions; comparisons alone promote the canary.
        duel = make_lora_version(tiny_model, store, "c-duel", seed=303, parent="c-good")
        announce(broker.bootstrap, duel)
        wait_policy(server, lambda s: s["canary_version"] == "c-duel", "c-duel as canary")
        compared = 0
        while compared < 20 and compare_and_prefer(server.url, feedback.url, "c-duel", {"c-good", "c-duel"}):
            compared += 1
        assert compared >= 8  # the minimum sample before any decision
        wait_policy(server, lambda s: s["stable_version"] == "c-duel", "c-duel promoted", timeout_s=90)

        trainer_status = httpx.get(f"{trainer.url}/status", timeout=10).json()
        assert trainer_status["stable_version"] == "c-duel"
        metrics = httpx.get(f"{trainer.url}/metrics", timeout=10).text
        assert 'flywheel_trainer_rollout_decisions_total{action="promote"} 2.0' in metrics
        assert 'flywheel_trainer_rollout_decisions_total{action="rollback"} 1.0' in metrics
        assert (store.root / "rollout.json").is_file()
    finally:
        for process in processes:
            stop_process(process)
        broker.stop()
