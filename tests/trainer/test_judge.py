"""AI feedback: a judge compares served answers in both orders; its verdicts reach the store through Kafka.

A scripted judge (a small OpenAI-compatible app here) stands for a judge model with known
habits; the real serving (tiny random model) is a judge too. The verdicts go through the real
feedback service, its relay and the real broker into the trainer's store, as kind `ai_pair`.
"""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flywheel.settings import TOPIC_COMPLETIONS
from flywheel.training_settings import JudgeSection
from flywheel.v1 import events_pb2
from tests.conftest import ADMIN_KEY, feedback_env, free_port, start_feedback, stop_process
from tests.trainer.synthetic import completion, traffic
from trainer.dataset import DatasetStore
from trainer.ingest import Ingestor
from trainer.judge import Candidate, Judge, candidates, judge_round, parse_verdict
from trainer.metrics import TrainerMetrics
from trainer.pairs import HeldOut, build_pairs
from trainer.records import AI_SOURCE, ExternalPairRow, prompt_key

_ANSWER = re.compile(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\n\nWhich answer", re.DOTALL)


class ScriptedJudge:
    """An OpenAI-compatible chat API whose verdicts follow a rule: `polite` prefers the answer that
    says please, `first` always says A (pure position bias), `mumble` never names an answer,
    `refuse` answers every question 400 (a model that does not take these parameters)."""

    def __init__(self, habit: str) -> None:
        self.habit = habit
        self.requests: list[dict] = []
        app = FastAPI()

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list", "data": [{"id": "scripted-judge", "object": "model", "created": 0,
                                                "owned_by": "tests"}]}  # fmt: skip

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(body)
            if self.habit == "refuse":
                error = {"message": "temperature is not supported", "type": "invalid_request_error",
                         "param": "temperature", "code": None}  # fmt: skip
                return JSONResponse({"error": error}, status_code=400)
            return {"id": "judge-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": self.reply(body)},
                                 "finish_reason": "stop"}]}  # fmt: skip

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def reply(self, body: dict) -> str:
        if self.habit == "first":
            return "A"
        if self.habit == "mumble":
            return "Both answers have merit."
        first, second = _ANSWER.search(body["messages"][-1]["content"]).groups()
        return "Answer B." if "please" in second.lower() and "please" not in first.lower() else "A"

    def __enter__(self) -> ScriptedJudge:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def own_feedback(module_broker, tmp_path_factory):
    """A broker and feedback service of this module's own: no other test's events reach its stores."""
    tmp = tmp_path_factory.mktemp("judge-feedback")
    server = start_feedback(tmp, feedback_env(tmp, module_broker.bootstrap))
    yield module_broker, server
    stop_process(server.process)


def config(url: str, **extra) -> JudgeSection:
    return JudgeSection(url=url, **extra)


def polite_and_curt() -> Candidate:
    return Candidate("k", (("user", "Tell me about rain."),), "Rain. Whatever.", "Please enjoy the rain, thank you.")


def test_a_verdict_is_the_first_letter_naming_an_answer():
    assert parse_verdict("A") == 0 and parse_verdict(" B.") == 1 and parse_verdict("Answer B is better") == 1
    assert parse_verdict("As a judge, B is better") == 1, "an article is not a verdict"
    assert parse_verdict("Both are fine.") is None and parse_verdict("") is None and parse_verdict("b") is None


@pytest.mark.parametrize(
    ("habit", "winner"), [("polite", 1), ("first", None), ("mumble", None)], ids=["consistent", "biased", "mumbles"]
)
def test_the_judge_is_asked_in_both_orders_and_a_position_bias_is_a_tie(habit, winner):
    with ScriptedJudge(habit) as server:
        verdict = Judge(config(server.url)).compare(polite_and_curt())
    assert verdict.winner == winner
    first, second = (_ANSWER.search(r["messages"][-1]["content"]).groups() for r in server.requests)
    assert first == tuple(reversed(second)), "the second question swaps the answers"
    assert all(r["model"] == "scripted-judge" and r["store"] is False for r in server.requests)
    assert "Prefer the answer that is more helpful" in server.requests[0]["messages"][0]["content"]


def test_a_constitution_file_is_what_the_judge_is_told(tmp_path):
    principles = tmp_path / "constitution.txt"
    principles.write_text("- Prefer answers that end with a question.\n")
    with ScriptedJudge("polite") as server:
        Judge(config(server.url, constitution=str(principles))).compare(polite_and_curt())
    assert "end with a question" in server.requests[0]["messages"][0]["content"]


def stored_traffic(tmp_path, count: int) -> DatasetStore:
    store = DatasetStore(tmp_path / "dataset.sqlite")
    store.ingest([(topic, payload) for topic, payload in traffic(count) if topic == TOPIC_COMPLETIONS])
    return store


def test_a_judge_that_refuses_every_question_is_reported_and_nothing_is_remembered(tmp_path):
    store = stored_traffic(tmp_path, 4)
    with ScriptedJudge("refuse") as server:
        report = judge_round(store, config(server.url), ADMIN_KEY, HeldOut(0))
    assert report.refused == 4 and report.judged == 0 and "refused every question" in report.errors[0]
    assert store.judged_digests() == set(), "refused pairs are asked again later"


def test_candidates_pair_distinct_answers_of_training_prompts_and_skip_what_was_judged(tmp_path):
    store = stored_traffic(tmp_path, 20)
    heldout = HeldOut.of(store.prompt_keys(), 10, 4)
    found = candidates(store, heldout, limit=100)
    assert len(found) == 20 - sum(key in heldout for key in store.prompt_keys())
    assert all(c.first != c.second and c.prompt_key not in heldout for c in found)
    assert len({c.prompt_key for c in candidates(store, heldout, limit=5)}) == 5, "spread over prompts"
    store.save_judgements([(c.digest, "tie") for c in found[:3]])
    assert {c.digest for c in candidates(store, heldout, limit=100)} == {c.digest for c in found[3:]}


def ai_row(i: int, seq: int) -> ExternalPairRow:
    return ExternalPairRow(f"k{i}", (("user", f"q{i}"),), f"good {i}", f"bad {i}", seq, AI_SOURCE)


def test_ai_pairs_train_as_weighted_and_are_never_held_out():
    rows = [ai_row(i, i) for i in range(400)]
    heldout = HeldOut(10)
    for weight, expected in ((0.0, 0), (1.0, 1), (2.0, 2)):
        pairs = build_pairs([], [], rows, {}, heldout, ai_weight=weight)
        kept = sum(r.prompt_key not in heldout for r in rows)
        assert len(pairs.train) == expected * kept and not pairs.heldout
    half = build_pairs([], [], rows, {}, heldout, ai_weight=0.5).train
    assert 0.4 * kept < len(half) < 0.6 * kept
    assert half == build_pairs([], [], rows, {}, heldout, ai_weight=0.5).train, "the same share every round"
    assert {p.source for p in half} == {AI_SOURCE}


def test_ai_verdicts_are_stored_apart_and_start_no_round(tmp_path):
    store = DatasetStore(tmp_path / "dataset.sqlite")
    event = events_pb2.FeedbackEvent(event_id="e1", idempotency_key="k1")
    event.external_pair.prompt.add(role="user", content="q")
    event.external_pair.chosen, event.external_pair.rejected, event.external_pair.source = "a", "b", AI_SOURCE
    store.ingest([("flywheel.feedback.v1", event.SerializeToString())])
    assert store.count_events() == {"ai_pair": 1} and store.count_feedback() == 0
    assert [r.source for r in store.external_pairs()] == [AI_SOURCE]


@pytest.mark.slow
def test_verdicts_travel_through_feedback_and_kafka_into_the_store(tmp_path, own_feedback):
    """The scripted judge prefers polite answers; its verdicts come back through the real broker as pairs."""
    broker, feedback_server = own_feedback
    store = DatasetStore(tmp_path / "dataset.sqlite")
    rng = random.Random(7)
    events = [completion(1000 + i, rng, prefix=f"judge-{tmp_path.name}") for i in range(6)]  # prompts of their own
    store.ingest([(TOPIC_COMPLETIONS, e.SerializeToString()) for e in events])
    ingestor = Ingestor.connect(broker.bootstrap, store, TrainerMetrics())
    try:
        with ScriptedJudge("polite") as server:
            settings = config(server.url, feedback_url=feedback_server.url, wait_s=60)
            report = judge_round(store, settings, ADMIN_KEY, HeldOut(0), catch_up=lambda: ingestor.poll(500))
            again = judge_round(store, settings, ADMIN_KEY, HeldOut(0), catch_up=lambda: ingestor.poll(500))
    finally:
        ingestor.close()
    assert (report.judged, report.pairs, report.accepted, report.stored) == (6, 6, 6, 6), report
    assert len(server.requests) == 12 and again.judged == 0, "each pair asked once in each order, never again"
    keys = {prompt_key([(m.role, m.content) for m in e.messages]) for e in events}
    mine = [r for r in store.external_pairs() if r.prompt_key in keys]
    assert len(mine) == 6 and all("please" in r.chosen.lower() and r.source == AI_SOURCE for r in mine)
    assert store.count_feedback() == 0, "a judge's verdicts are not people's feedback"


@pytest.mark.slow
@pytest.mark.engine
def test_the_real_serving_as_a_judge_is_asked_and_keeps_nothing(tmp_path, broker, serving_server, feedback_server):
    """A 135M-class judge is not worth much (a random tiny one mostly mumbles): the path still holds,
    and serving keeps no record of the judge's questions (store: false)."""
    store = stored_traffic(tmp_path, 3)
    settings = config(f"{serving_server.url}/v1", feedback_url=feedback_server.url, wait_s=5)
    before = completions_on_broker(broker.bootstrap)
    report = judge_round(store, settings, ADMIN_KEY, HeldOut(0))
    assert report.judged == 3 and not report.errors, report
    assert report.pairs + report.ties + report.unparsed == 3
    time.sleep(3)  # serving's publisher flushes in well under a second
    assert completions_on_broker(broker.bootstrap) == before, "the judge's questions were not published"


def completions_on_broker(bootstrap: str) -> int:
    from kafka import TopicPartition

    from flywheel.kafka import make_consumer

    consumer = make_consumer(bootstrap, None, [])
    try:
        partitions = [TopicPartition(TOPIC_COMPLETIONS, p) for p in consumer.partitions_for_topic(TOPIC_COMPLETIONS)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


@pytest.mark.slow
def test_a_round_with_a_judge_learns_from_its_verdicts_what_people_prefer(taught_policy, tmp_path, own_feedback):
    """People rate only held-out prompts; on every training prompt the reward model has only the
    scripted judge's verdicts (it prefers polite answers, as the synthetic users do)."""
    from tests.trainer.conftest import round_context
    from trainer.round import heldout_slice, run_round

    broker, feedback_server = own_feedback
    records = traffic(48, seed=3)
    completions = {}
    for topic, payload in records:
        if topic == TOPIC_COMPLETIONS:
            event = events_pb2.Completion.FromString(payload)
            completions[event.completion_id] = prompt_key([(m.role, m.content) for m in event.messages])
    keys = HeldOut.of(completions.values(), 10, 12)
    people = [(t, p) for t, p in records if t == TOPIC_COMPLETIONS
              or completions[events_pb2.FeedbackEvent.FromString(p).completion_id] in keys]  # fmt: skip
    with ScriptedJudge("polite") as server:
        judge = {"url": server.url, "feedback_url": feedback_server.url, "pairs_per_round": 64, "wait_s": 60}
        ctx, _ = round_context(tmp_path, taught_policy, people, judge=judge, admin_key=ADMIN_KEY,
                               reward={"min_heldout_prompts": 12})  # fmt: skip
        assert heldout_slice(ctx.dataset, ctx.settings) == keys
        ingestor = Ingestor.connect(broker.bootstrap, ctx.dataset, ctx.metrics)
        ctx.catch_up = lambda: ingestor.poll(500)
        try:
            result = run_round(ctx, reward_only=True)
        finally:
            ingestor.close()
    m = result.metrics
    trained_prompts = sum(key not in keys for key in set(completions.values()))
    assert m["judge_judged"] == trained_prompts and m["judge_pairs"] == trained_prompts, m
    # The verdicts of the test above (other prompts) come in through the module's broker too: their
    # prompts join the known ones and may move a prompt of people's out of the held-out slice.
    assert m["pairs_ai"] >= trained_prompts and m["pairs_train"] - m["pairs_ai"] <= 2, "people's pairs: held out"
    assert result.outcome == "reward_updated" and m["reward_accuracy"] >= 0.9, result
    assert ctx.metrics.judge_verdicts.labels("pair")._value.get() == trained_prompts
