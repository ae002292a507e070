"""A real Prometheus (Debian's) scrapes the running services and answers the dashboard's and the
alerts' queries: metric-name drift between what the services export and what operators watch
fails here, not on a cluster.

Serving runs on the tiny model, feedback takes thumbs and comparisons on its real completions, and
the trainer ingests them and runs one small round to its gates (the policy gate is set out of
reach, so it trains the reward model and PPO, evaluates, and publishes nothing), so the labelled
metrics exist too. Prometheus loads the PrometheusRule's groups and evaluates them.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from flywheel.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import ADMIN_METADATA, ROOT, TEST_API_KEY, free_port, start_process, start_trainer, stop_process
from tests.k8s.promql import (
    Query,
    alert_queries,
    dashboard_queries,
    label_matchers,
    metric_names,
    prometheus_rule,
    with_grafana_variables,
)

pytestmark = pytest.mark.engine

PROMETHEUS = "/usr/bin/prometheus"
ALICE = {"Authorization": f"Bearer {TEST_API_KEY}"}
PROMPTS = [f"Name a colour and a number, please ({i})." for i in range(12)]
# Labelled roll-out families (serving's receiver, the trainer's controller): until a version has
# been published and judged they have no series, so for these the family declared in /metrics is
# enough. Unlabelled roll-out metrics (canary fraction, swap time, P(canary better)) must exist.
DECLARED_ONLY = {
    "flywheel_serving_policy_refused",
    "flywheel_serving_rollout_decisions",
    "flywheel_trainer_rollout_decisions",
    "flywheel_trainer_rollout_thumbs",
}
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
SOURCES = {"flywheel_serving_": "serving", "flywheel_feedback_": "feedback", "flywheel_trainer_": "trainer"}
# One quick round on the tiny model: every pair counts, half the prompts held out, a single PPO
# update, and a policy gate no round can pass: nothing is published into the shared broker.
TRAINER_ENV = {
    "FLYWHEEL_ROUNDS__MIN_NEW_FEEDBACK": "1000000",
    "FLYWHEEL_ROUNDS__MIN_PAIRS": "1",
    "FLYWHEEL_REWARD__EPOCHS": "1",
    "FLYWHEEL_REWARD__ACCURACY_FLOOR": "0",
    "FLYWHEEL_REWARD__HELDOUT_PERCENT": "50",
    "FLYWHEEL_REWARD__MAX_LENGTH": "64",
    "FLYWHEEL_PPO__STEPS": "1",
    "FLYWHEEL_PPO__BATCH_SIZE": "4",
    "FLYWHEEL_PPO__MINI_BATCHES": "1",
    "FLYWHEEL_PPO__EPOCHS": "1",
    "FLYWHEEL_PPO__RESPONSE_LENGTH": "8",
    "FLYWHEEL_PPO__MAX_PROMPTS": "24",
    "FLYWHEEL_PPO__LOGPROB_TOLERANCE": "100",
    "FLYWHEEL_GATES__EVAL_PROMPTS": "4",
    "FLYWHEEL_GATES__MIN_REWARD_GAIN": "1000000",
    # Its roll-out controller stays out of the shared broker's policy topic.
    "FLYWHEEL_ROLLOUT__ENABLED": "false",
}


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Prometheus:
    url: str
    process: object
    log_path: Path

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def has_series(self, expr: str) -> bool:
        return bool(self.query(expr))


def base_family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def declared(name: str, exposition: str) -> bool:
    """Whether a /metrics text declares the family of `name` (its # HELP line)."""
    helped = set(re.findall(r"^# HELP (\S+)", exposition, flags=re.M))
    family = base_family(name)
    return bool({name, family, family + "_total"} & helped)


@pytest.fixture(scope="module")
def trainer(broker, tiny_model, tmp_path_factory):
    trainer = start_trainer(tmp_path_factory.mktemp("k8s-trainer"), broker.bootstrap, tiny_model, **TRAINER_ENV)
    yield trainer
    trainer.stop()


@pytest.fixture(scope="module")
def prometheus(serving_server, feedback_server, trainer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = tmp / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}, sort_keys=False))
    jobs = {"flywheel-serving": serving_server.url, "flywheel-feedback": feedback_server.url,
            "flywheel-trainer": trainer.url}  # fmt: skip
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [
                    {
                        "targets": [url.removeprefix("http://")],
                        "labels": {"namespace": "flywheel-test", "pod": f"{job}-0"},
                    }
                ],
            }
            for job, url in jobs.items()
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    log_path = tmp / "prometheus.log"
    process = start_process(args, {}, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 60, "Prometheus to be ready")
        yield Prometheus(url, process, log_path)
    finally:
        stop_process(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _trainer_status(trainer) -> dict:
    return httpx.get(f"{trainer.url}/status", timeout=10).json()


@pytest.fixture(scope="module")
def exercised(serving_server, feedback_server, trainer, prometheus) -> dict:
    """Traffic through every path, one training round, and Prometheus holding all of it."""
    before = _trainer_status(trainer)["events_ingested"]
    completions = []
    with httpx.Client(timeout=60, headers=ALICE) as client:
        for prompt in PROMPTS:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "n": 2, "temperature": 1.0}
            response = client.post(f"{serving_server.url}/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            completions.append(response.json())
        assert client.post(f"{serving_server.url}/v1/chat/completions", json={"messages": []}).status_code == 400
        feedback = f"{feedback_server.url}/v1"
        for i, completion in enumerate(completions):
            tokens = [choice["feedback_token"] for choice in completion["choices"]]
            compared = client.post(f"{feedback}/comparisons", json={
                "completion_id": completion["id"], "feedback_tokens": tokens,
                "preferred_choice_index": 0, "rejected_choice_index": 1})  # fmt: skip
            assert compared.status_code == 202, compared.text
            if i % 2 == 0:
                for index, rating in ((0, "up"), (1, "down")):
                    thumbs = {"completion_id": completion["id"], "choice_index": index, "rating": rating,
                              "feedback_token": tokens[index], "idempotency_key": f"k8s-{i}-{index}"}  # fmt: skip
                    assert client.post(f"{feedback}/feedback", json=thumbs).status_code == 202
        assert client.post(f"{feedback}/feedback", json=thumbs).json()["duplicate"] is True
        forged = {**thumbs, "feedback_token": "not-a-token"}
        assert client.post(f"{feedback}/feedback", json=forged).status_code in (400, 401, 403)

    ours = len(completions) * 2 + len(completions)  # completions, comparisons, thumbs
    wait_for(lambda: _trainer_status(trainer)["events_ingested"] >= before + ours, 60, "the trainer to ingest")
    time.sleep(2)  # whatever else is on the shared broker lands too

    with grpc.insecure_channel(trainer.grpc) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        assert stub.TriggerRound(trainer_pb2.TriggerRoundRequest(), timeout=10, metadata=ADMIN_METADATA).accepted

    def finished_round():
        rounds = _trainer_status(trainer)["recent_rounds"]
        return rounds and rounds[0]["finished_at"] and rounds[0]

    round_ = wait_for(finished_round, 300, "the round to finish", every=1)
    finished = time.time()
    # Enough scrapes after the round for rate() and increase() over the newest series.
    wait_for(lambda: prometheus.has_series("count_over_time(flywheel_trainer_rounds_total[1m]) >= 3"), 60,
             "Prometheus to scrape the round's metrics")  # fmt: skip
    wait_for(lambda: all(evaluated_at(r) > finished + 3 for r in rules(prometheus)), 30,
             "the rules to be evaluated after the round")  # fmt: skip
    expositions = {
        url: httpx.get(f"{url}/metrics", timeout=30).text
        for url in (serving_server.url, feedback_server.url, trainer.url)
    }
    return {"round": round_, "expositions": expositions}


def evaluated_at(rule: dict) -> float:
    """A rule's lastEvaluation (RFC 3339, UTC) in seconds since the epoch."""
    stamp = re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", rule["lastEvaluation"]).group(0)
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def rules(prometheus: Prometheus) -> list[dict]:
    body = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=30).json()
    return [rule for group in body["data"]["groups"] for rule in group["rules"]]


def all_queries() -> list[Query]:
    return alert_queries() + dashboard_queries()


def test_the_round_reached_the_gates(exercised):
    round_ = exercised["round"]
    assert round_["outcome"] == "gate_failed", round_
    assert "reward did not rise" in round_["reason"]


def test_prometheus_scrapes_every_service(prometheus, exercised):
    up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query('up{job=~"flywheel-.*"}')}
    assert up == {"flywheel-serving": "1", "flywheel-feedback": "1", "flywheel-trainer": "1"}


def test_every_metric_the_dashboard_and_alerts_use_is_exported(prometheus, exercised):
    everything = "\n".join(exercised["expositions"].values())
    names = sorted({name for query in all_queries() for name in metric_names(query.expr)})
    assert len(names) > 50
    missing, declared_only = [], []
    for name in names:
        if prometheus.has_series(f'count({{__name__="{name}"}})'):
            continue
        if base_family(name) in DECLARED_ONLY and declared(name, everything):
            declared_only.append(name)
            continue
        missing.append(name)
    assert not missing, f"used in k8s/ but not exported by the services: {missing}"
    assert len(declared_only) <= len(DECLARED_ONLY)


def test_every_label_value_the_queries_filter_on_is_produced(prometheus, exercised):
    """A label value not seen in this run must at least be written by the service's code."""
    problems = []
    for query in all_queries():
        for matcher in label_matchers(query.expr):
            if matcher.op not in ("=", "=~") or "$" in matcher.value or matcher.metric == "up":
                continue
            if base_family(matcher.metric) in DECLARED_ONLY or not matcher.metric.startswith("flywheel_"):
                continue
            values = matcher.value.split("|") if matcher.op == "=~" else [matcher.value]
            if matcher.op == "=~" and not all(re.fullmatch(r"[\w/-]+", value) for value in values):
                continue  # a real pattern, such as 5.. (any 5xx status)
            for value in values:
                if prometheus.has_series(f'{matcher.metric}{{{matcher.label}="{value}"}}'):
                    continue
                package = next(package for prefix, package in SOURCES.items() if matcher.metric.startswith(prefix))
                code = "\n".join(p.read_text() for p in (ROOT / package).rglob("*.py"))
                if f'"{value}"' not in code:
                    problems.append(f"{query.source}: {matcher.metric}{{{matcher.label}={value!r}}}")
    assert not problems, f"label values no service produces: {problems}"


def test_every_dashboard_query_returns_series(prometheus, exercised):
    empty = []
    for query in dashboard_queries():
        expr = with_grafana_variables(query.expr)
        if prometheus.has_series(expr):
            continue
        absent = {name for name in metric_names(expr) if not prometheus.has_series(f'count({{__name__="{name}"}})')}
        if not absent or not {base_family(name) for name in absent} <= DECLARED_ONLY:
            empty.append(f"{query.source}: {expr}")
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


def test_every_alert_rule_loads_and_evaluates(prometheus, exercised):
    loaded = rules(prometheus)
    assert {r["name"] for r in loaded} == {q.source.removeprefix("alert ") for q in alert_queries()}
    broken = [(r["name"], r["lastError"]) for r in loaded if r["health"] != "ok" or r.get("lastError")]
    assert not broken
    # Nothing is wrong in this run: no alert fires (pending or firing) on healthy services.
    assert [r["name"] for r in loaded if r["state"] != "inactive"] == []
