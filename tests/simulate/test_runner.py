"""The simulation loop against fake services (httpx MockTransport): what is sent, what is counted.

The real stack is in test_simulate_stack.py; these cover error paths a real stack will not
produce on demand.
"""

import asyncio
import json
from collections import Counter

import httpx
import pytest

from flywheel.simulate import runner
from flywheel.simulate.preferences import PreferenceError, load_preference
from flywheel.simulate.report import build_report, summary_text, write_outputs
from flywheel.simulate.runner import Simulation, SimulationConfig

SHORT, LONG = "Yes.", " ".join(["word"] * 80)


class FakeStack:
    """Serving and feedback in one handler; answers alternate short and long by choice index."""

    def __init__(self, versions=("base",), switch_after=None):
        self.versions = versions
        self.switch_after = switch_after
        self.completions = 0
        self.chat_headers: list[str] = []
        self.prompts: dict[str, str] = {}  # completion id -> the prompt it answered
        self.feedback: list[tuple[str, dict, str]] = []  # (path, body, authorization)
        self.fail_chat: dict[int, object] = {}  # completion number -> status code or exception
        self.fail_feedback: list[int] = []  # statuses to answer, in turn, before accepting

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            return self.chat(request)
        body = json.loads(request.content)
        if self.fail_feedback:
            status = self.fail_feedback.pop(0)
            headers = {"retry-after": "0"} if status in (429, 503) else {}
            return httpx.Response(status, json={"error": {"message": f"fake {status}"}}, headers=headers)
        self.feedback.append((request.url.path, body, request.headers["authorization"]))
        return httpx.Response(202, json={"event_id": f"e{len(self.feedback)}", "idempotency_key": "k",
                                         "duplicate": False})  # fmt: skip

    def chat(self, request: httpx.Request) -> httpx.Response:
        number = self.completions
        self.completions += 1
        failure = self.fail_chat.get(number)
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return httpx.Response(failure, json={"error": {"message": f"fake {failure}", "type": "x"}})
        self.chat_headers.append(request.headers["authorization"])
        body = json.loads(request.content)
        self.prompts[f"chatcmpl-{number}"] = body["messages"][0]["content"]
        version = self.versions[0] if self.switch_after is None or number < self.switch_after else self.versions[1]
        choices = [
            {"index": i, "message": {"role": "assistant", "content": SHORT if i % 2 == 0 else LONG},
             "finish_reason": "stop", "feedback_token": f"tok-{number}-{i}"}
            for i in range(body.get("n", 1))
        ]  # fmt: skip
        return httpx.Response(200, json={
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": choices, "policy_version": version,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })  # fmt: skip


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch):
    monkeypatch.setattr(runner, "_FAILURE_PAUSE_S", 0.0)


def simulate(fake, preference="concise:10", prompts=("Hello?", "How are you?"), **options):
    config = SimulationConfig(**{"users": 3, "turns": 20, "concurrency": 3, "noise": 0.0, "compare_share": 0.5,
                                 "seed": 7, **options})  # fmt: skip
    sim = Simulation(config, load_preference(preference), list(prompts), transport=httpx.MockTransport(fake))
    asyncio.run(sim.run())
    return sim


def test_every_turn_chats_then_sends_one_feedback_event_by_the_preference(tmp_path):
    fake = FakeStack(versions=("base", "v0001"), switch_after=10)
    sim = simulate(fake)
    assert fake.completions == 20 and len(fake.feedback) == 20
    kinds = Counter(path for path, _, _ in fake.feedback)
    assert kinds["/v1/comparisons"] > 0 and kinds["/v1/feedback"] > 0
    for path, body, _ in fake.feedback:
        number = int(body["completion_id"].split("-")[1])
        if path == "/v1/feedback":  # one choice, the short one: concise:10 likes it, no noise
            assert body["rating"] == "up" and body["feedback_token"] == f"tok-{number}-0"
        else:  # choice 0 is short, choice 1 long
            assert body["feedback_tokens"] == [f"tok-{number}-0", f"tok-{number}-1"]
            assert (body["preferred_choice_index"], body["rejected_choice_index"]) == (0, 1)
            assert body["strength"] == "much_better"
    # three users, three distinct keys, used round robin; one idempotency key per turn
    assert len(set(fake.chat_headers)) == 3 and len({a for _, _, a in fake.feedback}) == 3
    assert len({body["idempotency_key"] for _, body, _ in fake.feedback}) == 20

    report = build_report(sim, window_s=60)
    versions = {v["version"]: v for v in report["versions"]}
    assert set(versions) == {"base", "v0001"}
    assert sum(v["events_accepted"] for v in versions.values()) == 20 == report["overall"]["events_accepted"]
    assert report["overall"]["answers"] == 20 + kinds["/v1/comparisons"]
    assert (
        report["turns"] == {"started": 20, "completed": 20, "failed": 0, "cut_short": 0}
        and report["errors"]["total"] == 0
    )
    json_path, png_path = write_outputs(report, tmp_path)
    assert json.loads(json_path.read_text())["overall"]["events_accepted"] == 20
    assert png_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    text = summary_text(report, json_path, png_path)
    assert "v0001 vs base" in text and "errors: none" in text


def test_users_who_dislike_an_answer_send_their_rewrite_at_the_correction_share():
    fake = FakeStack()
    simulate(fake, preference="question", compare_share=0.0, correction_share=1.0)  # every answer lacks a "?"
    thumbs = [body for path, body, _ in fake.feedback if path == "/v1/feedback"]
    fixes = [body for path, body, _ in fake.feedback if path == "/v1/corrections"]
    assert len(thumbs) == 20 and all(body["rating"] == "down" for body in thumbs)
    assert len(fixes) == 20  # one rewrite after each thumbs down, for the same choice and token
    for body in fixes:
        number = body["completion_id"].split("-")[1]
        assert body["text"] == "Yes. Would you like to know more?" and body["feedback_token"] == f"tok-{number}-0"
    assert len({body["idempotency_key"] for body in fixes} | {body["idempotency_key"] for body in thumbs}) == 40

    none = FakeStack()
    simulate(none, preference="question", compare_share=0.0)  # the default share: no corrections
    assert not any(path == "/v1/corrections" for path, _, _ in none.feedback)
    liked = FakeStack()
    simulate(liked, preference="concise:10", compare_share=0.0, correction_share=1.0)  # "Yes." satisfies: no rewrite
    assert not any(path == "/v1/corrections" for path, _, _ in liked.feedback)


def test_contrarian_users_state_the_opposite_of_the_preference():
    fake = FakeStack()
    simulate(fake, users=4, turns=40, contrarian_share=0.25)  # user 0 of 4; no noise for the others
    by_user: dict[str, list[bool]] = {}
    for path, body, auth in fake.feedback:
        agreed = body["rating"] == "up" if path == "/v1/feedback" else body["preferred_choice_index"] == 0
        by_user.setdefault(auth, []).append(agreed)
    contrarian = f"Bearer {SimulationConfig(seed=7).user_key(0)}"
    assert not any(by_user.pop(contrarian)) and all(all(v) for v in by_user.values()) and len(by_user) == 3


def test_the_same_seed_sends_the_same_prompts_and_turn_kinds():
    def plan(seed):
        fake = FakeStack()
        simulate(fake, seed=seed, prompts=[f"prompt {i}" for i in range(30)], concurrency=4)
        turns = [(int(body["idempotency_key"].rsplit("-", 1)[1]), path, fake.prompts[body["completion_id"]])
                 for path, body, _ in fake.feedback]  # fmt: skip
        return sorted(turns)

    assert plan(3) == plan(3)
    assert plan(3) != plan(4)


def test_service_errors_are_counted_not_raised():
    fake = FakeStack()
    refused = httpx.ConnectError("refused")
    fake.fail_chat = {0: 400, 1: 500, 2: 500, 3: refused, 4: refused}  # openai retries 500s and refusals once
    fake.fail_feedback = [403, 429, 503]  # the 403 loses a turn; 429 then 503 are retried, then accepted
    sim = simulate(fake, turns=8, concurrency=1, compare_share=0.0)
    errors = sim.tally.errors
    assert errors["serving: http 400"] == 1 and errors["serving: http 500"] == 1
    assert errors["feedback: http 403"] == 1 and sim.tally.error_samples["feedback: http 403"] == "fake 403"
    assert sum(k.startswith("serving: connection") for k in errors) == 1
    report = build_report(sim)
    assert report["turns"] == {"started": 8, "completed": 4, "failed": 4, "cut_short": 0}
    assert report["overall"]["events_failed"] == 1
    assert report["overall"]["events_accepted"] == len(fake.feedback) == 4
    assert "feedback: http 403 x1" in summary_text(report)


def test_refused_keys_stop_the_run_with_a_clear_reason():
    fake = FakeStack()
    fake.fail_chat = {i: 401 for i in range(100)}
    sim = simulate(fake, turns=50, concurrency=2)
    assert sim.tally.turns_started <= 2 and "pass --api-key KEY once per simulated user" in sim.fatal
    assert build_report(sim)["run"]["stopped"] == "refused"


def test_a_duration_ends_the_run():
    sim = simulate(FakeStack(), turns=None, duration_s=0.3, concurrency=2)
    assert sim.tally.turns_started > 0 and sim.elapsed_s() >= 0.3


def test_a_broken_preference_function_ends_the_run(tmp_path):
    path = tmp_path / "pref.py"
    path.write_text("def score(prompt, answer):\n    return 2\n")
    with pytest.raises(PreferenceError, match="returned 2"):
        simulate(FakeStack(), preference=f"{path}:score")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"users": 0}, "--users"),
        ({"noise": 1.5}, "--noise"),
        ({"compare_share": -0.1}, "--compare-share"),
        ({"concurrency": 0}, "--concurrency"),
        ({"users": 3, "api_keys": ("a", "b")}, "one --api-key per simulated user"),
    ],
)
def test_bad_configuration_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**options)


def test_users_get_distinct_keys_or_the_given_ones():
    assert len({SimulationConfig(seed=1).user_key(i) for i in range(16)}) == 16
    assert SimulationConfig(users=2, api_keys=("k1", "k2")).user_key(1) == "k2"
    assert SimulationConfig().turn_limit == runner.DEFAULT_TURNS
    assert SimulationConfig(duration_s=5).turn_limit is None


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert runner.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="--duration"):
        runner.parse_duration(text)


def test_without_a_terminal_the_progress_line_is_printed_at_intervals(capsys):
    import io
    import time

    from rich.console import Console

    from flywheel.simulate.command import _status_lines

    sim = simulate(FakeStack(), turns=4)
    with _status_lines(sim, Console(file=io.StringIO(), force_terminal=False), every_s=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("turn 4/4 · ") for line in lines), lines
    with _status_lines(sim, Console(file=io.StringIO(), force_terminal=True), every_s=0.05):
        time.sleep(0.2)  # a terminal has the live line instead
    assert capsys.readouterr().err == ""
