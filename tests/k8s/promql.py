"""What the alerts and the dashboard ask Prometheus for: expressions, metric names, label matchers.

A small PromQL reader, enough for our own expressions (Prometheus 2.42 has no parse endpoint):
strings, label matchers, ranges and grouping clauses are cut away, and what remains that is not
a function, an operator or a keyword is a metric name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = ROOT / "k8s" / "base" / "monitoring" / "dashboards" / "flywheel.json"

# Grafana's variables, as a test substitutes them: every namespace, a 1-minute rate window.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$namespace": ".*"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Query:
    source: str  # "alert FlywheelX" or "panel 'Title'"
    expr: str


@dataclass(frozen=True)
class Matcher:
    metric: str
    label: str
    op: str
    value: str


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords and label names left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in KEYWORDS}


def label_matchers(expr: str) -> list[Matcher]:
    """Every `metric{label op "value"}` matcher in an expression."""
    return [
        Matcher(metric, label, op, value)
        for metric, body in _SELECTOR.findall(expr)
        for label, op, value in _MATCHER.findall(body)
    ]


def prometheus_rule() -> dict:
    return yaml.safe_load(RULES.read_text())


def alert_queries() -> list[Query]:
    return [
        Query(f"alert {rule['alert']}", rule["expr"])
        for group in prometheus_rule()["spec"]["groups"]
        for rule in group["rules"]
    ]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[Query]:
    """Every panel target, and the metric behind each query variable (label_values(metric, label))."""
    queries = [
        Query(f"panel {panel['title']!r}", target["expr"])
        for panel in _panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            metric = re.fullmatch(r"label_values\(([\w:]+),\s*\w+\)", query)
            assert metric, f"dashboard variable {variable['name']}: unexpected query {query!r}"
            queries.append(Query(f"variable {variable['name']}", metric.group(1)))
    return queries


def with_grafana_variables(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    return expr
