"""Writes deploy/k8s/base/prometheusrule.yaml: the Prometheus Operator's PrometheusRule carrying the groups
of deploy/prometheus/alerts.yml, the one place the rules are edited (tests/deploy/test_alerts.py fails
when the two differ)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by scripts/gen_prometheusrule.py: edit that file, then run it.
# kube-prometheus-stack's Prometheus picks PrometheusRules by the same `release` label as ServiceMonitors.
"""


def prometheus_rule() -> dict:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "vita-serve",
            "labels": {"app.kubernetes.io/name": "vita-serve", "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": groups},
    }


class _BlockStrings(yaml.SafeDumper):
    """Multi-line PromQL stays readable (`|` blocks)."""


_BlockStrings.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def main() -> None:
    TARGET.write_text(HEADER + yaml.dump(prometheus_rule(), Dumper=_BlockStrings, sort_keys=False, width=200))
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
