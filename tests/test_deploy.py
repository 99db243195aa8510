"""deploy/: the Prometheus alert rules pass their promtool tests, and the rules and the Grafana
dashboard query only metrics that the service serves, in valid PromQL."""

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import callback_fields, new_sid, signed
from tests.test_metrics import promtool

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "status-tracker.json"
METRIC = re.compile(r"\bstatus_tracker_[a-z0-9_]+")
# Names of recording rules, which look like metrics but are made by the rules themselves.
RECORDED = re.compile(r"\b[a-z_]+:status_tracker_[a-z0-9_]+:[a-z0-9_]+")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True)


async def exported(client: httpx.AsyncClient) -> set[str]:
    """The series names a scrape of the service offers, after a callback went through."""
    target, body, headers = signed(callback_fields(new_sid(), "delivered"))
    assert (await client.post(target, content=body, headers=headers)).status_code == 204
    text = (await client.get("/metrics")).text
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return queries


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


async def test_alert_rules_pass_their_promtool_tests():
    checked = await run(promtool(), "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = await run(promtool(), "test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert is exercised by a test that expects it to fire.
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired


async def test_alerts_and_dashboard_query_only_exported_metrics(client: httpx.AsyncClient):
    names = await exported(client)
    queries = alert_queries() + dashboard_queries()
    used = {name for query in queries for name in METRIC.findall(RECORDED.sub("", query))}
    assert len(used) >= 12
    assert used - names == set()


async def test_dashboard_is_a_grafana_dashboard_of_valid_promql(tmp_path: Path):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    kinds = {panel["type"] for panel in dashboard["panels"]}
    assert {"timeseries", "heatmap"} <= kinds
    # Grafana's variables as Grafana would put them, then promtool parses each query.
    values = {"$__rate_interval": "5m", "$country": ".*", "$sender": ".*"}
    rules = []
    for number, panel in enumerate(dashboard["panels"]):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:panel_{number}_{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = await run(promtool(), "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
