"""The Grafana dashboard queries only metrics the code declares, with labels they have."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "vita-dashboard.json"
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/metrics.py"))

# Series a family exposes, by type (prometheus_client names a counter's family without `_total`).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# Labels Prometheus attaches to every scraped series (the target's), not declared by the code.
TARGET_LABELS = {"namespace", "job"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def declared_series() -> tuple[dict[str, str], dict[str, set[str]]]:
    """{series name: family type} and {series name: label names} of everything the services declare."""
    for service in SERVICES:
        importlib.import_module(f"services.{service}.metrics")
    series: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = family.type
    # Label names: from the metric objects (collect() has no samples for a labelled metric never used).
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 - test-only introspection
        names = getattr(collector, "_labelnames", None)
        if names is None:
            continue
        for name in REGISTRY._collector_to_names[collector]:  # noqa: SLF001
            labels[name] = set(names) | ({"le"} if name.endswith("_bucket") else set())
    return series, labels


def parse_promql(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range / subquery durations, $__rate_interval
    label_names: set[str] = set()
    for selector in re.findall(r"\{([^}]*)\}", text):
        label_names |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    text = re.sub(r"\{[^}]*\}", " ", text)
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        label_names |= {name.strip() for name in clause.split(",") if name.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    metrics = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name in PROMQL_KEYWORDS:
            continue
        metrics.add(name)
    return metrics, label_names


def dashboard_targets():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_promql_parser():
    metrics, labels = parse_promql(
        'histogram_quantile(0.95, sum by (le, stage) (rate(vita_x_seconds_bucket{kind="compute"}[$__rate_interval])))'
        " / clamp_min(sum(rate(vita_y_total[5m])), 1e-9)"
    )
    assert metrics == {"vita_x_seconds_bucket", "vita_y_total"}
    assert labels == {"le", "stage", "kind"}


def test_every_query_uses_declared_metrics_and_labels():
    series, labels = declared_series()
    assert SERVICES and all(f"vita_{s}_rpcs_total" in series for s in SERVICES)
    problems = []
    for title, expr in dashboard_targets():
        metrics, used_labels = parse_promql(expr)
        assert metrics, f"{title}: no metric in {expr!r}"
        for name in metrics:
            if name not in series:
                problems.append(f"{title}: {name} is not exported by the code")
            elif series[name] == "histogram" and not name.endswith(("_bucket", "_sum", "_count")):
                problems.append(f"{title}: histogram {name} queried without _bucket/_sum/_count")
        known = set().union(*(labels.get(name, set()) for name in metrics)) | TARGET_LABELS
        unknown = used_labels - known
        if unknown:
            problems.append(f"{title}: labels {sorted(unknown)} not declared on {sorted(metrics)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_latency_throughput_errors_and_saturation(service):
    exprs = [expr for _, expr in dashboard_targets() if f"vita_{service}_" in expr]
    assert any("histogram_quantile" in e for e in exprs), f"{service}: no latency panel"
    assert any(f"vita_{service}_rpcs_total" in e and "code!~" in e for e in exprs), f"{service}: no error ratio"
    assert any("rate(" in e and "_total" in e for e in exprs), f"{service}: no throughput"
    assert any(f"vita_{service}_active_rpcs" in e for e in exprs), f"{service}: no saturation"
    assert any(f"vita_{service}_ready" in e for e in exprs), f"{service}: no readiness"


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job"]
    for name in ("namespace", "job"):
        # "All" must match series without the label too (Compose targets have no namespace).
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    # User-facing latencies are on the dashboard.
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for name in ("ttft", "ttfa", "eos_to_audio", "stage_seconds", "audio_underrun_risk", "redis_seconds"):
        assert f"vita_orchestrator_{name}" in exprs


def test_every_query_is_scoped_to_the_chosen_namespace_and_job():
    # Two deployments on one Prometheus must not be summed together.
    problems = []
    for title, expr in dashboard_targets():
        for name, selector in re.findall(r"\b(vita_\w+)(\{[^}]*\})?", expr):
            if 'namespace=~"$namespace"' not in selector or 'job=~"$job"' not in selector:
                problems.append(f"{title}: {name}{selector}")
    assert not problems, "\n".join(problems)

