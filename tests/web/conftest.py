"""The chat page's stack: real broker, serving (tiny model), feedback and trainer; Debian's Chromium.

Serving and feedback are started here rather than taken from the shared fixtures, because each
must name the other: serving tells the page where feedback is, and feedback allows serving's origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from flywheel.broker import Broker
from tests.conftest import (
    FeedbackServer,
    TrainerProcess,
    feedback_env,
    free_port,
    serving_env,
    start_feedback,
    start_serving,
    start_trainer,
    stop_process,
)

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright never downloads a browser here
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageStack:
    """Serving, which serves a page, and the trainer, whose dataset keeps what the page sent."""

    serving_url: str
    trainer: TrainerProcess

    @property
    def dataset_path(self) -> Path:
        return Path(self.trainer.env["FLYWHEEL_DATA_DIR"]) / "trainer" / "dataset.sqlite"


@dataclass
class ChatStack(PageStack):
    feedback: FeedbackServer


@pytest.fixture(scope="module")
def chat_stack(tiny_model: Path, broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> ChatStack:
    tmp = tmp_path_factory.mktemp("web")
    serving_port = free_port()
    serving_url = f"http://127.0.0.1:{serving_port}"
    feedback = start_feedback(tmp, feedback_env(tmp, broker.bootstrap, FLYWHEEL_CORS_ORIGINS=serving_url))
    env = serving_env(
        tmp, broker.bootstrap, FLYWHEEL_FEEDBACK_PUBLIC_URL=feedback.url, FLYWHEEL_DEFAULT_MAX_TOKENS="48"
    )
    serving = start_serving(tiny_model, tmp, env, port=serving_port, wait=False)  # its engine loads meanwhile
    trainer = None
    try:
        # Rounds off: this stack only checks that the page's events reach the trainer's store.
        trainer = start_trainer(tmp, broker.bootstrap, tiny_model, FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK="1000000")
        serving.wait_ready()
        yield ChatStack(serving_url=serving_url, trainer=trainer, feedback=feedback)
    finally:
        serving.stop()
        stop_process(feedback.process)
        if trainer is not None:
            trainer.stop()


@pytest.fixture(scope="module")
def browser() -> Browser:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Page:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
