"""Write prometheusrule.yaml from deploy/prometheus/alerts.yml, the one source of the rules.

    python3 deploy/kubernetes/monitoring/sync_rules.py

The suite (tests/deploy/test_kubernetes.py) fails when the two differ, so a rule changed in
alerts.yml without running this cannot reach a release.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "prometheus" / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by sync_rules.py next to this file: edit the rules
# there, then run `python3 deploy/kubernetes/monitoring/sync_rules.py`. The suite checks that the
# groups here equal alerts.yml's.
"""


def render(source: Path = SOURCE) -> str:
    """The PrometheusRule manifest carrying exactly the groups of ``source``."""
    groups: list[dict[str, Any]] = yaml.safe_load(source.read_text(encoding="utf-8"))["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tag-watchdog", "labels": {"app.kubernetes.io/name": "tag-watchdog"}},
        "spec": {"groups": groups},
    }
    body = yaml.safe_dump(rule, sort_keys=False, width=10_000, allow_unicode=True)
    return HEADER + body


def main() -> int:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
