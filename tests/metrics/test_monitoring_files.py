"""infra/monitoring/: the alerts under promtool (syntax and unit tests), the plain rules equal to the
PrometheusRule, both operator objects under their strict CRD schemas, and the dashboard and docs naming only
metrics that camray makes."""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from crd_schemas import served_v1_schema, strict
from monitoring_parts import MONITORING, PROMTOOL, REPO, binary

from camray.metrics import RunOutcome, outcome_registry

PROMETHEUSRULE = MONITORING / "prometheusrule.yaml"
PLAIN_RULES = MONITORING / "rules.yml"
PODMONITOR = MONITORING / "podmonitor.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
CRD_FIXTURES = REPO / "tests" / "fixtures" / "prometheus-operator"
DOC = REPO / "docs" / "monitoring.md"
ALERTS = ("CamrayNoSuccessfulNight", "CamrayErrorShareHigh", "CamrayS3RetriesRising", "CamrayRunSlow")
# Metric names in PromQL: camray's own, and Ray's (`ray_` prefixed, camray's live metrics and Ray Data's).
METRIC_NAME = re.compile(r"\b((?:ray|camray)_[a-z0-9_]+)\b")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(PROMETHEUSRULE)["spec"]["groups"] for rule in group["rules"]]


def pushed_names() -> set[str]:
    success = RunOutcome("succeeded", "out", 1.0, 1.0, 1, 1, 1)
    return {metric.name for metric in outcome_registry(success).collect()}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary(PROMTOOL), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# promtool -------------------------------------------------------------------------------------------------------


def test_the_rules_pass_promtool_check(tmp_path):
    from_operator = tmp_path / "from-prometheusrule.yml"
    from_operator.write_text(yaml.safe_dump({"groups": load(PROMETHEUSRULE)["spec"]["groups"]}))
    for path in (PLAIN_RULES, from_operator):
        checked = promtool("check", "rules", str(path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_each_alert_fires_and_stays_quiet_at_the_right_times():
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = load(ALERT_TESTS)["tests"]
    for alert in ALERTS:
        checks = [c for case in cases for c in case.get("alert_rule_test", []) if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in checks), f"{alert} is never shown firing"
        assert any(not c["exp_alerts"] for c in checks), f"{alert} is never shown quiet"


@pytest.mark.parametrize(
    ("alert", "change"),
    [
        ("CamrayNoSuccessfulNight", ("> 26 * 3600", "> 28 * 3600")),
        ("CamrayErrorShareHigh", ("> 0.05", "> 0.2")),
        ("CamrayS3RetriesRising", ("> 2 *", "> 20 *")),
        ("CamrayRunSlow", ("> 1.5 *", "> 3 *")),
    ],
)
@pytest.mark.integration
def test_the_unit_tests_catch_a_changed_threshold(tmp_path, alert, change):
    """The promtool tests bind each threshold: moved, they fail, and name the alert (only the cases of that
    alert run: promtool replays every case's days of samples)."""
    rules_dir, tests_dir = tmp_path / "infra" / "monitoring", tmp_path / "tests" / "metrics"
    rules_dir.mkdir(parents=True)
    tests_dir.mkdir(parents=True)
    text = PLAIN_RULES.read_text()
    assert text.count(change[0]) == 1
    (rules_dir / PLAIN_RULES.name).write_text(text.replace(*change))
    cases = load(ALERT_TESTS)
    cases["tests"] = [
        case for case in cases["tests"] if any(c["alertname"] == alert for c in case.get("alert_rule_test", []))
    ]
    (tests_dir / ALERT_TESTS.name).write_text(yaml.safe_dump(cases))
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=tests_dir)
    assert tested.returncode != 0 and f"alertname: {alert}," in tested.stdout + tested.stderr


def test_the_plain_rules_are_the_prometheusrules_groups():
    assert load(PLAIN_RULES) == {"groups": load(PROMETHEUSRULE)["spec"]["groups"]}


def test_every_alert_has_a_summary_a_description_and_a_runbook_in_the_docs():
    doc = DOC.read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("#")
    }
    assert [rule["alert"] for rule in rules()] == list(ALERTS)
    for rule in rules():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, rule["alert"]
        anchor = re.search(r"docs/monitoring\.md#([a-z0-9-]+)", annotations["runbook"]).group(1)
        assert anchor == rule["alert"].lower() and anchor in headings, f"{rule['alert']}: no section #{anchor}"
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_the_alerts_read_only_pushed_metrics():
    names = {name for rule in rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert names and names <= pushed_names(), names - pushed_names()


# prometheus-operator CRDs ------------------------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    return served_v1_schema(CRD_FIXTURES / f"monitoring.coreos.com_{kind.lower()}s.yaml", kind)


def crd_errors(obj: dict[str, Any], *, strict_schema: bool = True) -> list[str]:
    schema = strict(copy.deepcopy(crd_schema(obj["kind"]))) if strict_schema else crd_schema(obj["kind"])
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("path", [PROMETHEUSRULE, PODMONITOR], ids=lambda p: p.name)
def test_the_operator_objects_pass_the_strict_crd_schema(path):
    (obj,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert crd_errors(obj) == []


def test_the_strict_schema_rejects_misspelt_fields_that_the_plain_one_lets_through():
    rule = load(PROMETHEUSRULE)
    alert = rule["spec"]["groups"][0]["rules"][0]
    alert["annotation"] = alert.pop("annotations")
    assert crd_errors(rule, strict_schema=False) == []
    errors = crd_errors(rule)
    assert len(errors) == 1 and errors[0].startswith("spec.groups.0.rules.0: ") and "'annotation'" in errors[0]

    monitor = load(PODMONITOR)
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    endpoint["relabeling"] = endpoint.pop("relabelings")
    assert crd_errors(monitor, strict_schema=False) == []
    assert any("'relabeling' was unexpected" in error for error in crd_errors(monitor))


def test_the_podmonitor_scrapes_the_metrics_port_kuberay_gives_every_ray_pod():
    spec = load(PODMONITOR)["spec"]
    assert spec["selector"] == {"matchLabels": {"ray.io/is-ray-node": "yes"}}
    assert [endpoint["port"] for endpoint in spec["podMetricsEndpoints"]] == ["metrics"]


# Dashboard and docs -------------------------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_imports_and_reads_one_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
    pushed = [expr for expr in dashboard_exprs() if "camray_run_" in expr]
    assert pushed and all('job="$job"' in expr and 'output=~"$output"' in expr for expr in pushed)


def test_the_docs_name_every_metric_that_camray_makes_or_the_dashboard_reads():
    doc = DOC.read_text()
    live = {"ray_camray_images_processed_total", "ray_camray_image_errors_total", "ray_camray_predictor_batch_seconds"}
    dashboard = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    dashboard = {re.sub(r"_(bucket|sum|count)$", "", name) for name in dashboard}
    for name in pushed_names() | live | dashboard:
        assert f"`{name}`" in doc, name
