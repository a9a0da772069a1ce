"""A real Prometheus (Debian's package) scrapes a real `tag-watchdog run` while a scripted move,
deletion and registry error happen; then every dashboard expression and every alert rule must
return data.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.test_files import DEPLOY, alert_rules, dashboard_exprs, tool
from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn

# --- a real Prometheus scraping a real daemon -------------------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    binary = tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(scrape_port: int) -> str:
        conf_dir = tmp_path / "prometheus"
        conf_dir.mkdir()
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", conf_dir / "alerts.yml")
        (conf_dir / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["alerts.yml"],
                    "scrape_configs": [
                        {
                            "job_name": "tag-watchdog",
                            "static_configs": [{"targets": [f"127.0.0.1:{scrape_port}"]}],
                        }
                    ],
                }
            )
        )
        port = free_port()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={conf_dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "prometheus.log").open("wb"),
            )
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{url}/-/ready"), 30, "prometheus to start")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def _get(url: str) -> httpx.Response | None:
    try:
        resp = httpx.get(url, timeout=3)
    except httpx.TransportError:
        return None
    return resp if resp.status_code == 200 else None


def _query(url: str, expr: str) -> list[Any]:
    resp = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    resp.raise_for_status()
    return list(resp.json()["data"]["result"])


def test_dashboard_and_alert_rules_return_data_from_a_real_prometheus(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Any,
    prometheus: Any,
) -> None:
    pusher.index(repo, "0.15.0", seed="release")
    doomed = pusher.image(repo, "0.14.0", seed="old")
    # a registry behind a proxy that reports a rate limit, and one that is not there at all
    limited: faultproxy.FaultProxy = make_fault_proxy(registry)
    limited.rewrite_header(None, "/v2/", "RateLimit-Remaining", "95;w=21600")
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    cfg = tmp_path / "c.yaml"
    slack = SlackStandIn().start()
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n"
        f"slack: {{webhook_url: '{slack.webhook_url}'}}\n"
        f"watches:\n  - {registry.host}/{repo}\n  - {limited.host}/{repo}\n  - {dead}/gone/app\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "-c", str(cfg)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = prometheus(port)
        name = f"{registry.host}/{repo}"
        wait_for(
            lambda: _query(url, f'tag_watchdog_tags_watched{{repository="{name}"}} == 2'),
            30,
            "the first check to be scraped",
        )
        # the scripted incidents: a move and a deletion
        pusher.index(repo, "0.15.0", seed="rebuild")
        pusher.delete_manifest(repo, doomed.digest)
        wait_for(
            lambda: _query(url, f'tag_watchdog_tag_deletions_total{{repository="{name}"}} > 0'),
            30,
            "the deletion to be scraped",
        )
        wait_for(
            lambda: _query(url, 'ALERTS{alertname="ReleaseTagDeleted"}'), 30, "the rule to fire"
        )
        wait_for(lambda: _query(url, "tag_watchdog_alerts_total > 0"), 30, "an alert delivery")

        for expr in dashboard_exprs():
            expr = expr.replace("$__rate_interval", "1m")
            assert _query(url, expr), f"dashboard expression returned no data: {expr}"
        for rule in alert_rules():
            expr = rule["expr"]
            # the series behind every rule exist; the threshold decides whether it fires
            series = re.split(r"\s*(?:==|!=|>=|<=|>|<)\s*[\d.]+\s*$", expr)[0]
            assert _query(url, series), f"{rule['alert']}: no data for {series}"
        firing = {a["metric"]["alertname"] for a in _query(url, "ALERTS")}
        assert {"ReleaseTagMoved", "ReleaseTagDeleted"} <= firing
        assert _query(url, alert_rules()[-1]["expr"]), "registry errors are not seen"
        moved = _query(url, 'ALERTS{alertname="ReleaseTagMoved"}')
        assert {m["metric"]["tag"] for m in moved} == {"0.15.0"}
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
        slack.stop()
    assert daemon.returncode == 0, err.decode()
