"""The Prometheus alert rules and the Grafana dashboard that ship in deploy/.

``promtool check rules`` and ``promtool test rules`` (deploy/prometheus/alerts.test.yaml) run when
promtool is there (``deploy/local/promtool.sh``, called by ``make test``'s system-deps, fetches it from
Debian's ``prometheus`` package into the cache). The structure checks below run always, promtool or
not. That every metric the rules and the panels use is one absync really exports is checked against a
live ``/metrics`` in tests/web/test_monitoring_metrics.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "absync-dashboard.json"
METRIC = re.compile(r"\babsync_[a-z0-9_]+\b")
REQUIRED_ALERTS = {
    "AbsyncConsumerLagHigh",  # consumer lag
    "AbsyncRetryBacklogHigh",  # retry backlog
    "AbsyncDestinationErrorRateHigh",  # error rate per destination
    "AbsyncDeadLetterGrowth",  # dead-letter growth
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def promtool() -> str | None:
    """promtool: ABSYNC_PROMTOOL, the cache of deploy/local/promtool.sh, else the PATH."""
    explicit = os.environ.get("ABSYNC_PROMTOOL")
    if explicit:
        return explicit
    cache = Path(os.environ.get("ABSYNC_CACHE_DIR") or REPO / ".cache")
    cached = cache / "promtool" / "usr" / "bin" / "promtool"
    return str(cached) if cached.is_file() else shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in data["templating"]["list"] if v["type"] == "query"]
    return exprs


def referenced_metrics() -> set[str]:
    """Every absync metric name the rules and the dashboard use."""
    texts = [rule["expr"] for rule in rules()] + dashboard_expressions()
    return {name for text in texts for name in METRIC.findall(text)}


@pytest.mark.skipif(promtool() is None, reason="promtool not available (deploy/local/promtool.sh)")
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    binary = promtool()
    assert binary is not None
    check = subprocess.run(
        [binary, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    test = subprocess.run(
        [binary, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_every_alert_rule_is_well_formed_and_the_four_asked_for_are_there() -> None:
    """The schema check (what promtool checks first, without promtool)."""
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = []
    for group in document["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and METRIC.search(rule["expr"]), rule["alert"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == set(names), "every rule has a case in alerts.test.yaml"


def test_the_dashboard_is_a_grafana_dashboard_whose_every_panel_queries_absync() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        assert panel["title"]
        assert (
            set(panel["gridPos"]) == {"x", "y", "w", "h"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        assert panel["datasource"]["type"] == "prometheus"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), f"{panel['title']}: {target['expr']}"
            assert target["expr"].count("(") == target["expr"].count(")")
    used = {name for text in dashboard_expressions() for name in METRIC.findall(text)}
    rule_metrics = {name for rule in rules() for name in METRIC.findall(rule["expr"])}
    assert rule_metrics - {"absync_kafka_metrics_up"} <= used | {"absync_destination_enabled"}, (
        "the dashboard shows what the alerts watch"
    )
