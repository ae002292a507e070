"""The chat page in headless Chromium against the real stack: chat, stream, rate, compare.

What a person does on the page must end up in the trainer's dataset; model output must never be
parsed as HTML; a service that is down must say so on the page.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Locator, Page, Route, expect

from tests.conftest import TEST_API_KEY, TEST_USER
from trainer.dataset import DatasetStore
from trainer.pairs import build_pairs

pytestmark = pytest.mark.engine

EVENT_DEADLINE_S = 60


def open_chat(page: Page, url: str, chat_api: Callable[[Route], None] | None = None) -> None:
    """Open the page; with `chat_api`, that handler answers the page's chat requests instead of serving."""
    if chat_api is not None:
        page.route("**/v1/chat/completions", chat_api)
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def ask(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send", exact=True).click()


def answer_to(page: Page, text: str, state: str = "done") -> Locator:
    """Ask the one question of a fresh page; its answer once it is in `state` ("done" or "error")."""
    ask(page, text)
    answer = page.locator("article.answer")
    expect(answer).to_have_attribute("data-state", state)
    return answer


def count_answer_updates(page: Page) -> None:
    """Record the length of the newest answer's text each time the page changes it."""
    page.evaluate(
        """() => {
            window.answerLengths = [];
            new MutationObserver(() => {
                const answers = document.querySelectorAll("article.answer .answer-text");
                if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
            }).observe(document.getElementById("transcript"), {subtree: true, childList: true, characterData: true});
        }"""
    )


def trainer_events(store: DatasetStore, completion_ids: set[str]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in store.raw_events():
        completion_id = row["event"].get("completionId")
        if completion_id in completion_ids:
            found.setdefault(completion_id, []).append(row)
    return found


def wait_for_trainer(chat_stack, wanted: dict[str, set[str]]) -> dict[str, list[dict]]:
    """Poll the trainer's SQLite store until each completion id has the event kinds `wanted` names."""
    deadline = time.monotonic() + EVENT_DEADLINE_S
    while not chat_stack.dataset_path.exists():
        assert time.monotonic() < deadline, "the trainer never created its dataset"
        time.sleep(0.5)
    store = DatasetStore(chat_stack.dataset_path)
    try:
        while True:
            found = trainer_events(store, set(wanted))
            kinds = {cid: {row["kind"] for row in rows} for cid, rows in found.items()}
            if all(need <= kinds.get(cid, set()) for cid, need in wanted.items()):
                return found
            assert time.monotonic() < deadline, f"the trainer's store has only {kinds} of {wanted}"
            time.sleep(0.5)
    finally:
        store.close()


def test_a_person_chats_rates_corrects_and_compares_and_the_trainer_stores_each(page: Page, chat_stack):
    open_chat(page, chat_stack.serving_url)
    expect(page.locator("#service-chat")).to_have_attribute("data-state", "up")
    expect(page.locator("#service-feedback")).to_have_attribute("data-state", "up")

    # -- chat: the answer streams in, piece by piece, with its policy version under it
    count_answer_updates(page)
    with page.expect_response("**/v1/chat/completions") as chat_response:
        ask(page, "Tell me about owls.")
    assert chat_response.value.headers["content-type"].startswith("text/event-stream")
    assert chat_response.value.request.post_data_json["stream"] is True
    answer = page.locator("article.answer").first
    expect(answer).to_have_attribute("data-state", "done")
    text = answer.locator(".answer-text").text_content()
    assert text
    lengths = [n for n in page.evaluate("window.answerLengths") if n]
    assert len(set(lengths)) >= 2, f"the answer appeared at once, not streamed: {lengths}"
    expect(answer.locator(".policy")).to_have_text(re.compile(r"^policy \S+$"))
    shown_policy = answer.locator(".policy").text_content()

    # -- a thumbs down with a comment and one dimension score
    answer.get_by_role("button", name="Thumbs down").click()
    answer.get_by_label("Comment").fill("Nothing about owls here.")
    answer.get_by_label("Accuracy").select_option("1")
    with page.expect_request("**/v1/feedback") as thumbs_request:
        answer.get_by_role("button", name="Send feedback").click()
    expect(answer.locator(".rating-state")).to_have_text("Thanks, recorded.")
    thumbs = thumbs_request.value.post_data_json
    assert thumbs["idempotency_key"]  # the page's own, so its retries are one event and a change of mind is not
    assert "authorization" not in thumbs_request.value.headers  # anonymous: no key pasted yet

    # -- an edit: the person rewrites the answer as it should have been
    answer.get_by_role("button", name="Edit").click()
    editor = answer.get_by_label("Your answer")
    expect(editor).to_have_value(text)  # the rewrite starts from the answer
    answer.get_by_role("button", name="Send correction").click()
    expect(answer.locator(".correction-state")).to_contain_text("Change the answer first")
    rewrite = "Owls are birds of prey that hunt at night."
    editor.fill(rewrite)
    with page.expect_request("**/v1/corrections") as correction_request:
        answer.get_by_role("button", name="Send correction").click()
    expect(answer.locator(".correction-state")).to_have_text("Thanks, your correction is recorded.")
    assert correction_request.value.post_data_json["idempotency_key"]

    # -- compare mode, with an API key pasted into the page: two answers side by side, B preferred
    page.get_by_text("API key", exact=True).click()
    page.get_by_label("API key, kept in this tab only").fill(TEST_API_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-state")).to_contain_text(TEST_API_KEY[-4:])
    page.get_by_label("Compare two answers").check()
    with page.expect_request("**/v1/chat/completions") as compare_request:
        ask(page, "And about hawks?")
    assert compare_request.value.post_data_json["n"] == 2
    assert compare_request.value.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    # the second request carries the conversation so far
    assert [m["content"] for m in compare_request.value.post_data_json["messages"]] == [
        "Tell me about owls.",
        text,
        "And about hawks?",
    ]
    comparison = page.locator("section.comparison")
    expect(comparison.locator("article.answer")).to_have_count(2)
    for pair_answer in comparison.locator("article.answer").all():
        expect(pair_answer).to_have_attribute("data-state", "done")
    expect(comparison.locator(".policy")).to_have_text([re.compile(r"^policy \S+$")] * 2)
    shown_pair = [pair_answer.text_content() for pair_answer in comparison.locator(".answer-text").all()]
    comparison.get_by_label("by").select_option("much_better")
    with page.expect_request("**/v1/comparisons") as comparison_request:
        comparison.get_by_role("button", name="B is better").click()
    expect(comparison.locator(".verdict-state")).to_have_text("Thanks, recorded: B is better.")
    expect(comparison.locator("article.answer").nth(1)).to_have_class("answer preferred")
    compared = comparison_request.value.post_data_json

    # -- every event reaches the trainer's store, each beside the completion it judges
    found = wait_for_trainer(chat_stack, {thumbs["completion_id"]: {"completion", "thumbs", "correction"},
                                          compared["completion_id"]: {"completion", "comparison"}})  # fmt: skip
    rows = {row["kind"]: row for row in found[thumbs["completion_id"]]}
    completion, rating = rows["completion"], rows["thumbs"]
    assert rows["correction"]["event"]["correction"]["text"] == rewrite
    store = DatasetStore(chat_stack.dataset_path)
    try:  # ... and the next round trains on it: the rewrite beats the answer it rewrote
        pairs = build_pairs([], [], [], {}, 0, store.corrections())
    finally:
        store.close()
    ours = [(p.rejected, p.source) for p in [*pairs.train, *pairs.heldout] if p.chosen == rewrite]
    assert ours == [(text, "correction")]  # the store is shared with other tests: their rewrites are there too
    assert completion["event"]["choices"][0]["text"] == text
    assert shown_policy == f"policy {completion['event']['policyVersion']}"
    assert rating["kind"] == "thumbs"
    assert rating["event"]["thumbs"]["rating"] == "RATING_DOWN"
    assert rating["event"]["thumbs"]["comment"] == "Nothing about owls here."
    assert rating["event"]["thumbs"]["dimensions"] == {"accuracy": 1}
    assert rating["event"]["policyVersion"] == completion["event"]["policyVersion"]

    by_kind = {row["kind"]: row["event"] for row in found[compared["completion_id"]]}
    assert [choice.get("text", "") for choice in by_kind["completion"]["choices"]] == shown_pair  # A is choice 0
    comparison_event = next(row for row in found[compared["completion_id"]] if row["kind"] == "comparison")
    assert comparison_event["event"]["comparison"]["ranking"] == [1, 0]
    assert comparison_event["event"]["comparison"]["strength"] == "COMPARISON_STRENGTH_MUCH_BETTER"
    assert comparison_event["event"]["userId"] == TEST_USER  # the pasted key named the user in both services


def sse(*chunks: dict) -> str:
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


def chunk(content: str, **choice) -> dict:
    return {
        "id": "chatcmpl-html",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "flywheel",
        "policy_version": "v-html",
        "choices": [{"index": 0, "delta": {"content": content}, **choice}],
    }


HOSTILE = '<img src="x" onerror="window.pwned = 1"><script>window.pwned = 2</script><b>bold</b>'


def test_model_output_that_looks_like_html_is_shown_as_text(page: Page, chat_stack):
    def hostile_answer(route: Route) -> None:
        body = sse(chunk(HOSTILE[:20], feedback_token="fw1.t"), chunk(HOSTILE[20:], finish_reason="stop"))
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    open_chat(page, chat_stack.serving_url, chat_api=hostile_answer)
    answer = answer_to(page, "<i>my own</i> markup")
    expect(answer.locator(".answer-text")).to_have_text(HOSTILE)
    expect(page.locator(".user-text")).to_have_text("<i>my own</i> markup")
    expect(answer.locator(".policy")).to_have_text("policy v-html")
    transcript = page.locator("#transcript")
    for tag in ("img", "script", "b", "i"):
        expect(transcript.locator(tag)).to_have_count(0)
    assert page.evaluate("window.pwned") is None


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("unreachable", "The chat service can't be reached. Is it running?"),
        ("loading", "The chat service answered 503: the model is still loading"),
    ],
)
def test_a_failed_chat_request_says_why_and_keeps_the_question(page: Page, chat_stack, failure, message):
    def fail(route: Route) -> None:
        if failure == "unreachable":
            route.abort("connectionrefused")
        else:
            error = {"message": "the model is still loading", "type": "service_unavailable", "code": "not_ready"}
            route.fulfill(status=503, json={"error": error})

    open_chat(page, chat_stack.serving_url, chat_api=fail)
    answer = answer_to(page, "Are you there?", state="error")
    expect(answer.locator(".answer-error")).to_have_text(message)
    expect(page.get_by_label("Message")).to_have_value("Are you there?")
    expect(answer.locator(".rating")).to_have_count(0)


def test_the_page_says_when_the_feedback_service_is_down(page: Page, chat_stack):
    chat_stack.feedback.process.terminate()
    chat_stack.feedback.process.wait(30)
    try:
        open_chat(page, chat_stack.serving_url)
        expect(page.locator("#service-feedback")).to_have_attribute("data-state", "down")
        expect(page.get_by_role("alert").first).to_contain_text("The feedback service can't be reached")

        answer = answer_to(page, "Still here?")  # chatting still works
        answer.get_by_role("button", name="Thumbs up").click()
        answer.get_by_role("button", name="Send feedback").click()
        expect(answer.locator(".rating")).to_have_attribute("data-state", "error")
        expect(answer.locator(".rating-state")).to_contain_text(
            f"The feedback service at {chat_stack.feedback.url} can't be reached, so this was not saved."
        )
    finally:
        chat_stack.feedback.restart()


def test_the_page_config_names_the_feedback_service_and_feedback_allows_the_page(chat_stack):
    serving, feedback = chat_stack.serving_url, chat_stack.feedback.url
    config = httpx.get(f"{serving}/config.json", timeout=10).json()
    assert config["feedback_url"] == feedback
    assert (config["model"], config["anonymous"]) == ("flywheel", True)

    page = httpx.get(f"{serving}/", timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    assert f"connect-src 'self' {feedback};" in page.headers["content-security-policy"]
    for name, media_type in (("chat.js", "text/javascript"), ("keys.js", "text/javascript"), ("base.css", "text/css")):
        assert httpx.get(f"{serving}/static/{name}", timeout=10).headers["content-type"].startswith(media_type)
    for missing in ("nothing.js", "..%2Fapi%2Fpages.py", "chat.html%00.js"):
        assert httpx.get(f"{serving}/static/{missing}", timeout=10).status_code == 404

    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{feedback}/v1/feedback", headers={"Origin": serving, **preflight}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == serving
    other = httpx.options(f"{feedback}/v1/feedback", headers={"Origin": "http://evil.example", **preflight}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
