"""ops/grafana/ledger-dashboard.json: a dashboard Grafana imports, whose every query uses metrics
the service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "ledger-dashboard.json"

# Grafana's own variables, and the ones the dashboard defines, stand for these in PromQL.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every target, not by the service

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])\d[\w.]*")  # 0.99, 1e3, and durations: offset 5m
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in matchers or grouping clauses) or variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _VARIABLE.sub("", text)
    text = _NUMBER.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        followed_by = text[match.end() :].lstrip()[:1]
        if followed_by == "(" or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def exported_names() -> set[str]:
    """Every sample name the service's /metrics serves (health.metrics is generate_latest of
    this registry), once a provider's series exist, plus Prometheus's own `up`."""
    metrics.initialise(["medioot"])
    text = generate_latest(REGISTRY).decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    return names | PROMETHEUS_OWN


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (provider, le) (rate(ledger_postback_duration_seconds"
        '_bucket{job="$job", provider=~"a|b"}[$__rate_interval]))) > 2.5 and on (provider) '
        "up offset 5m unless ledger_typo_total"
    )
    assert metric_names(expr) == {
        "ledger_postback_duration_seconds_bucket",
        "up",
        "ledger_typo_total",
    }
    assert "ledger_typo_total" not in exported_names()


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = load()
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert isinstance(dashboard["uid"], str) and 0 < len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int)
    # An import creates a new dashboard: no database id may be carried along.
    assert dashboard.get("id") is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = dashboard["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        where = f"panel {panel.get('title')!r}"
        assert isinstance(panel["id"], int), where
        assert isinstance(panel["title"], str) and panel["title"], where
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}, where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), where
        assert grid["x"] + grid["w"] <= 24, where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert isinstance(target["expr"], str) and target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = [t["expr"] for _, t in targets(load())]

    def some(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert some("ledger_postbacks_total", "provider, outcome")
    assert some("ledger_postback_signature_failures_total")
    assert some("histogram_quantile(0.5", "ledger_postback_duration_seconds_bucket")
    assert some("histogram_quantile(0.99", "ledger_postback_duration_seconds_bucket")
    assert some("ledger_events_total")
    assert some("ledger_database_up")


def test_every_metric_in_the_dashboard_exists() -> None:
    dashboard = load()
    known = exported_names()
    for title, target in targets(dashboard):
        used = metric_names(target["expr"])
        assert used, f"{title}: no metric in {target['expr']!r}"
        assert used <= known, f"{title}: {sorted(used - known)} not exported by the service"
    for query in variable_queries(dashboard):
        selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert selector, query
        used = metric_names(selector.group(1))
        assert used and used <= known, f"variable query {query!r} uses {sorted(used - known)}"


def test_every_variable_a_query_uses_is_defined() -> None:
    dashboard = load()
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_BUILTINS)
    for title, target in targets(dashboard):
        for variable in _VARIABLE.findall(target["expr"]):
            name = variable.strip("${}").split(":")[0]
            assert name in defined, f"{title}: ${name} is not a dashboard variable"


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed: dashboard queries not parsed (Debian: apt-get install "
    "prometheus; .ci/run installs it)",
)
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query, with Grafana's variables filled in, as a recording rule."""
    dashboard = load()
    substitutions = {**GRAFANA_BUILTINS, "job": "postback-ledger", "provider": ".*"}

    def fill(expr: str) -> str:
        return _VARIABLE.sub(lambda m: substitutions[m.group().strip("${}").split(":")[0]], expr)

    rules = [
        {"record": f"dashboard:query_{i}", "expr": fill(t["expr"])}
        for i, (_, t) in enumerate(targets(dashboard))
    ]
    path = tmp_path / "dashboard_rules.yml"
    # JSON is YAML: no YAML library needed.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
