"""The operator page in headless Chromium against the real stack: serving (tiny model), trainer, broker.

Versions are published into serving's model store and announced as the trainer announces them; the
operator sees each as canary, promotes one and rolls the next back from the page, and serving's
roll-out API must then say so. A wrong admin key, an action another operator already took, and a
service that is down must each say so on the page.
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from flywheel.broker import Broker
from flywheel.channel import announce
from flywheel.kafka import make_producer
from flywheel.settings import TOPIC_COMPLETIONS, TOPIC_FEEDBACK
from flywheel.store import ModelStore
from tests.conftest import ADMIN_KEY, free_port, serving_env, start_serving, start_trainer, stop_process
from tests.serving.versions import make_lora_version
from tests.trainer.synthetic import completion, feedback
from tests.web.conftest import PageStack
from trainer.dataset import DatasetStore

pytestmark = pytest.mark.engine

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PAGE_DEADLINE_MS = 30_000  # the page refreshes every 5 s


@dataclass
class OpsStack(PageStack):
    serving: subprocess.Popen
    serving_log: Path
    store: ModelStore
    bootstrap: str

    def policy(self) -> dict:
        return httpx.get(f"{self.serving_url}/v1/policy", timeout=10).json()

    def wait_policy(self, check, what: str, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.policy()
            if check(status):
                return status
            time.sleep(0.2)
        tail = self.serving_log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{what} not seen within {timeout_s} s; status {self.policy()}\n{tail}")


@pytest.fixture(scope="module")
def ops_stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> OpsStack:
    """Its own broker: versions announced here must not reach other tests' replicas, nor theirs this one."""
    tmp = tmp_path_factory.mktemp("ops")
    broker = Broker(port=free_port()).start()
    serving_port, trainer_port, trainer_grpc = free_port(), free_port(), free_port()
    serving_url, trainer_url = f"http://127.0.0.1:{serving_port}", f"http://127.0.0.1:{trainer_port}"
    env = serving_env(tmp, broker.bootstrap, FLYWHEEL_TRAINER_PUBLIC_URL=trainer_url, FLYWHEEL_CANARY_FRACTION="0.5",
                      FLYWHEEL_REPLICA_ID="ops-replica")  # fmt: skip
    server = start_serving(tiny_model, tmp, env, port=serving_port, wait=False)
    serving, serving_log = server.process, server.log_path
    trainer = None
    try:
        # Started while serving loads its engine.
        trainer = start_trainer(tmp, broker.bootstrap, tiny_model, port=trainer_port, grpc_port=trainer_grpc,
                                FLYWHEEL_DATA_DIR=str(tmp / "trainer-data"), FLYWHEEL_CORS_ORIGINS=serving_url,
                                FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK="1000000")  # fmt: skip
        server.wait_ready()
        store = ModelStore(Path(env["FLYWHEEL_DATA_DIR"]) / "store")
        yield OpsStack(
            serving_url=serving_url,
            trainer=trainer,
            serving=serving,
            serving_log=serving_log,
            store=store,
            bootstrap=broker.bootstrap,
        )
    finally:
        server.stop()
        if trainer is not None:
            trainer.stop()
        broker.stop()


def publish(stack: OpsStack, tiny_model: Path, version: str, seed: int, parent: str, algorithm: str = "ppo") -> None:
    manifest = make_lora_version(tiny_model, stack.store, version, seed=seed, parent=parent,
                                 extra={"algorithm": algorithm})  # fmt: skip
    announce(stack.bootstrap, manifest)
    stack.wait_policy(lambda s: s["canary_version"] == version, f"{version} as canary")


def send_feedback(stack: OpsStack) -> None:
    """Thumbs for the canary and the base, and one comparison of their answers, as the feedback service sends."""
    rng, records = random.Random(0), []
    thumbs = [("op-v1", "up")] * 3 + [("op-v1", "down"), ("base", "up"), ("base", "down")]
    for i, (version, rating) in enumerate(thumbs):
        event = completion(i, rng, version=version, prefix="ops")
        records += [(TOPIC_COMPLETIONS, event), (TOPIC_FEEDBACK, feedback(event, rating))]
    event = completion(99, rng, version="op-v1", prefix="ops")
    compared = feedback(event, "comparison")
    preferred = compared.comparison.ranking[0]  # op-v1 wrote the preferred answer
    compared.choice_policy_versions.extend(["op-v1", "base"] if preferred == 0 else ["base", "op-v1"])
    records += [(TOPIC_COMPLETIONS, event), (TOPIC_FEEDBACK, compared)]
    producer = make_producer(stack.bootstrap)
    try:
        for topic, message in records:
            producer.send(topic, key=message.completion_id.encode(), value=message.SerializeToString()).get(30)
    finally:
        producer.close(timeout=5)


def record_rounds(stack: OpsStack) -> None:
    """Two finished rounds in the trainer's own store, as its round loop writes them."""
    store = DatasetStore(stack.dataset_path)
    try:
        first = store.begin_round(3)
        store.finish_round(first, "gate_failed", "reward model held-out accuracy 0.412 is below the floor 0.600", "",
                           {"reward_accuracy": 0.412, "pairs_train": 40.0, "pairs_heldout": 4.0})  # fmt: skip
        second = store.begin_round(7)
        store.finish_round(second, "published", "", "op-v1", {
            "reward_accuracy": 0.75, "reward_accuracy_previous": 0.412, "pairs_train": 80.0, "pairs_heldout": 8.0,
            "ppo_score_last": 0.31, "ppo_kl": 0.8, "eval_new_mean_reward": 0.42, "eval_parent_mean_reward": 0.18,
            "eval_new_mean_kl": 1.7, "pairs_ai": 12.0, "raters_excluded": 2.0,
        })  # fmt: skip
    finally:
        store.close()


def open_ops(page: Page, url: str) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # "Promote …? / Roll back …?": yes
    page.goto(f"{url}/ops")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def use_key(page: Page, key: str) -> None:
    panel = page.locator("#key-panel")
    if panel.get_attribute("open") is None:
        page.get_by_text("Admin key", exact=True).click()
    page.get_by_label("Admin key, kept in this tab only").fill(key)
    page.get_by_role("button", name="Use key").click()


def version_row(page: Page, version: str):
    return page.locator(f'#versions-table tbody tr[data-version="{version}"]')


def test_the_page_is_served_with_the_trainers_address(ops_stack):
    config = httpx.get(f"{ops_stack.serving_url}/config.json", timeout=10).json()
    assert config["trainer_url"] == ops_stack.trainer.url
    response = httpx.get(f"{ops_stack.serving_url}/ops", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert f"connect-src 'self' {ops_stack.trainer.url};" in response.headers["content-security-policy"]
    cors = httpx.get(f"{ops_stack.trainer.url}/history", headers={"Origin": ops_stack.serving_url}, timeout=10)
    assert cors.headers["access-control-allow-origin"] == ops_stack.serving_url


def test_an_operator_promotes_a_canary_and_rolls_back_the_next_from_the_page(page: Page, ops_stack, tiny_model):
    stack = ops_stack
    publish(stack, tiny_model, "op-v1", seed=1, parent="base", algorithm="kto")
    send_feedback(stack)
    record_rounds(stack)
    open_ops(page, stack.serving_url)
    expect(page.locator("#service-serving")).to_have_attribute("data-state", "up")
    expect(page.locator("#service-trainer")).to_have_attribute("data-state", "up")
    expect(page.locator("#banner")).to_be_hidden()

    # -- what the operator sees: the roll-out, the store, live feedback and rounds
    expect(page.locator("#stable-version")).to_have_text("base")
    expect(page.locator("#canary-version")).to_have_text("op-v1")
    expect(page.locator("#canary-fraction")).to_have_text("50%")
    expect(version_row(page, "op-v1").locator(".badge")).to_have_text("canary")
    expect(version_row(page, "op-v1").locator(".parent")).to_have_text("base")
    expect(version_row(page, "op-v1").locator(".algorithm")).to_have_text("KTO")  # from its manifest
    expect(version_row(page, "base").locator(".algorithm")).to_have_text("\u2013")
    expect(version_row(page, "base").locator(".badge")).to_have_text("stable")
    row = version_row(page, "op-v1")
    expect(row.locator(".thumbs")).to_have_text("3/4 (75%)", timeout=PAGE_DEADLINE_MS)  # once the trainer has them
    # wins, losses, ties: the comparison is sent last and may reach the trainer a refresh after the thumbs
    expect(row.locator(".wins")).to_have_text("1\u20130\u20130", timeout=PAGE_DEADLINE_MS)
    expect(version_row(page, "base").locator(".thumbs")).to_have_text("1/2 (50%)")
    expect(page.locator("#comparisons-note")).to_contain_text("1 between answers of different versions")
    uprate = page.locator("#chart-uprate svg")
    expect(uprate.locator('g[data-series="op-v1"] circle')).to_have_count(1)
    expect(uprate.locator('g[data-series="op-v1"] circle title')).to_contain_text("3 up, 1 down (75%)")
    expect(page.locator("#verdict")).to_contain_text("waiting for", timeout=PAGE_DEADLINE_MS)  # the controller
    rounds = page.locator("#rounds-table tbody tr")
    expect(rounds).to_have_count(2)
    expect(rounds.first).to_contain_text("published")
    expect(rounds.first).to_contain_text("80 + 8 held out, 12 from the AI judge; 2 raters left out")
    expect(rounds.nth(1)).to_contain_text("below the floor 0.600")
    expect(page.locator("#chart-outcomes rect")).to_have_count(2)
    expect(page.locator('#chart-accuracy g[data-series="new reward model"] circle')).to_have_count(2)
    expect(page.locator('#chart-reward g[data-series="held-out: new policy"] circle')).to_have_count(1)

    # -- no key, then a wrong key: refused, clearly, and nothing changes
    page.get_by_role("button", name="Promote canary").click()
    expect(page.locator("#action-state")).to_contain_text("Paste the admin key first")
    use_key(page, "not-the-admin-key")
    page.get_by_role("button", name="Promote canary").click()
    expect(page.locator("#action-state")).to_contain_text("The admin key was refused (401)")
    expect(page.locator("#action-state")).to_have_attribute("data-state", "error")
    assert stack.policy()["canary_version"] == "op-v1"

    # -- the right key: the canary share, then promotion
    use_key(page, ADMIN_KEY)
    page.get_by_label("Canary share (%)").fill("25")
    page.get_by_role("button", name="Set share").click()
    expect(page.locator("#action-state")).to_have_text("Done: canary fraction is now 0.25.")
    stack.wait_policy(lambda s: s["canary_fraction"] == 0.25, "canary fraction 0.25")
    expect(page.locator("#canary-fraction")).to_have_text("25%")
    with page.expect_request("**/v1/policy/promote") as promoted:
        page.get_by_role("button", name="Promote canary").click()
    assert promoted.value.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert promoted.value.post_data_json["version"] == "op-v1"
    expect(page.locator("#action-state")).to_have_text("Done: op-v1 is now stable.")
    status = stack.wait_policy(lambda s: s["stable_version"] == "op-v1", "op-v1 stable")
    assert status["canary_version"] == ""
    expect(page.locator("#stable-version")).to_have_text("op-v1")
    expect(page.locator("#canary-version")).to_have_text("none")
    expect(page.get_by_role("button", name="Roll back canary")).to_be_disabled()

    # -- the next version arrives as canary (the page refreshes by itself) and is rolled back
    publish(stack, tiny_model, "op-v2", seed=2, parent="op-v1")
    expect(page.locator("#canary-version")).to_have_text("op-v2", timeout=PAGE_DEADLINE_MS)
    page.get_by_role("button", name="Roll back canary").click()
    expect(page.locator("#action-state")).to_have_text("Done: op-v2 rolled back; op-v1 serves everyone.")
    status = stack.wait_policy(lambda s: s["canary_version"] == "" and "op-v2" in s["retired"], "op-v2 retired")
    assert status["stable_version"] == "op-v1"
    expect(version_row(page, "op-v2").locator(".badge")).to_have_text("retired")
    expect(version_row(page, "op-v2").locator(".note")).to_contain_text("rolled back")

    # -- another operator was faster: the page's roll-back is refused with serving's reason (409)
    publish(stack, tiny_model, "op-v3", seed=3, parent="op-v1")
    expect(page.locator("#canary-version")).to_have_text("op-v3", timeout=PAGE_DEADLINE_MS)
    page.get_by_label("Refresh every 5 s").uncheck()
    response = httpx.post(f"{stack.serving_url}/v1/policy/rollback", json={}, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    page.get_by_role("button", name="Roll back canary").click()
    expect(page.locator("#action-state")).to_have_text("Not done (409): there is no canary to roll back")
    expect(page.locator("#canary-version")).to_have_text("none")  # the page looked again after the refusal


def test_the_page_says_when_the_trainer_or_serving_cannot_be_reached(page: Page, ops_stack):
    open_ops(page, ops_stack.serving_url)
    expect(page.locator("#service-trainer")).to_have_attribute("data-state", "up")

    ops_stack.trainer.stop()
    banner = page.locator("#banner")
    expect(banner).to_contain_text(f"The trainer at {ops_stack.trainer.url} can't be reached", timeout=PAGE_DEADLINE_MS)
    expect(page.locator("#service-trainer")).to_have_attribute("data-state", "down")
    expect(page.locator("#chart-uprate")).to_have_text("The trainer can't be reached.")
    expect(page.locator("#verdict")).to_have_text("unknown: the trainer can't be reached")
    expect(page.locator("#stable-version")).to_have_text("op-v1")  # serving still answers

    stop_process(ops_stack.serving)
    expect(banner).to_contain_text("Serving can't be reached", timeout=PAGE_DEADLINE_MS)
    expect(page.locator("#service-serving")).to_have_attribute("data-state", "down")
    expect(page.locator("#rollout")).to_have_attribute("data-stale", "true")
