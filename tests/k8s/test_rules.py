"""The PrometheusRule and the Grafana dashboard on their own: promtool accepts the rules, every
alert is explained in the operations guide, and the PromQL reader the metrics test relies on."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.k8s.promql import alert_queries, dashboard, dashboard_queries, label_matchers, metric_names, prometheus_rule

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
GUIDE = ROOT / "docs" / "operations.md"


def rules_file(tmp_path):
    """The PrometheusRule's spec as a plain Prometheus rules file."""
    path = tmp_path / "flywheel-rules.yml"
    path.write_text(yaml.safe_dump({"groups": prometheus_rule()["spec"]["groups"]}, sort_keys=False))
    return path


def test_promtool_checks_the_rules(tmp_path):
    result = subprocess.run([PROMTOOL, "check", "rules", str(rules_file(tmp_path))], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(group["rules"]) for group in prometheus_rule()["spec"]["groups"])
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(rate(x[5m])"}]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode != 0


def test_every_alert_says_how_bad_it_is_and_where_its_runbook_is():
    guide = GUIDE.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", guide, flags=re.M)}  # fmt: skip
    names = []
    for group in prometheus_rule()["spec"]["groups"]:
        for rule in group["rules"]:
            names.append(rule["alert"])
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            page, _, anchor = rule["annotations"]["runbook"].partition("#")
            assert page == "docs/operations.md" and anchor == rule["alert"].lower(), rule["alert"]
            assert anchor in anchors, f"docs/operations.md has no section for {rule['alert']}"
    assert len(names) == len(set(names))


def test_the_alerts_cover_what_operators_must_hear_about():
    metrics = {name for query in alert_queries() for name in metric_names(query.expr)}
    for needed in (
        "flywheel_feedback_outbox_depth",  # outbox growing
        "flywheel_trainer_ingest_lag",  # consumer lag
        "flywheel_trainer_rounds_total",  # gate failures in a row, no new version
        "flywheel_serving_policy_swap_failures_total",  # swap failures
        "flywheel_serving_request_latency_seconds_bucket",  # p99 latency
        "flywheel_serving_requests_total",  # error rate
        "flywheel_trainer_versions_published_total",  # no new version for too long
    ):
        assert needed in metrics, needed


def test_the_dashboard_is_well_formed_and_shows_every_part():
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"].lower() for panel in board["panels"])
    for word in ("requests", "latency", "tokens per second", "thumbs-up rate by version", "feedback accepted",
                 "canary", "versions served", "reward model", "ppo", "ingestion lag"):  # fmt: skip
        assert word in titles, word
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    assert all("$namespace" in q.expr for q in dashboard_queries() if q.source.startswith("panel"))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{route="/x", s=~"5.."}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum(rate(b[1m])) by (le)) > 0.5", {"b"}),
        ("x unless on (namespace) y offset 5m", {"x", "y"}),
        ('max by (pod) (vllm:kv_cache_usage_perc{namespace=~"$namespace"})', {"vllm:kv_cache_usage_perc"}),
        ("(sum(rate(c[$__rate_interval])) or vector(0)) / sum(rate(d[1m]))", {"c", "d"}),
        ("up == 0", {"up"}),
    ],
)
def test_the_promql_reader_finds_the_metric_names(expr, names):
    assert metric_names(expr) == names


def test_the_promql_reader_finds_label_matchers():
    (matcher,) = label_matchers('rate(m_total{outcome="gate_failed"}[1h])')
    assert (matcher.metric, matcher.label, matcher.op, matcher.value) == ("m_total", "outcome", "=", "gate_failed")
