"""The alerting rules (deploy/prometheus/alerts.yml): promtool checks them and runs their unit tests
(deploy/prometheus/alerts.test.yml), and every metric they read is one the code declares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.test_dashboard import declared_series, parse_promql
from tests.deploy.test_manifests import DEPLOY

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
# Series Prometheus adds itself, not the code.
BUILTIN_SERIES = {"up"}


@pytest.fixture(scope="module")
def promtool() -> str:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: scripts/test.sh installs it (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus: apt-get install prometheus)")
    return PROMTOOL


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(promtool):
    result = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120, cwd=ALERT_TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - tested == set(), "alerts no test sees firing"


def test_rules_read_only_declared_metrics():
    series, labels = declared_series()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    problems = []
    for rule in rules():
        expr = rule["expr"]
        names, _ = parse_promql(expr)
        # {__name__=~"vita_(a|b)_x"} selectors: every alternative must exist.
        for prefix, alternatives, suffix in re.findall(r'__name__=~"(\w*)\(([\w|]+)\)(\w*)"', expr):
            names |= {prefix + alternative + suffix for alternative in alternatives.split("|")}
        for name in names - recorded - BUILTIN_SERIES:
            if name not in series:
                problems.append(f"{rule.get('alert') or rule.get('record')}: {name} is not exported by the code")
    assert not problems, "\n".join(problems)


def test_the_ttfa_objective_is_a_bucket_boundary():
    from shared.metrics import LATENCY_BUCKETS_S

    thresholds = set(re.findall(r'vita_orchestrator_ttfa_seconds_bucket\{[^}]*le="([\d.]+)"', ALERTS.read_text()))
    assert thresholds and all(float(value) in LATENCY_BUCKETS_S for value in thresholds), thresholds
