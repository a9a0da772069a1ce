"""Database faults under a running daemon: PostgreSQL stopped and started again."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn


def _cluster() -> list[str]:
    versions = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir() if p.name.isdigit())
    return [versions[-1], "main"]


def _ready(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=3).status_code
    except httpx.TransportError:
        return 0


@pytest.mark.postgres
def test_postgres_restarted_under_run_loses_and_doubles_nothing(
    tmp_path: Path,
    pg_url: str,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="a")
    slack = SlackStandIn().start()
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: '{pg_url}'\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n"
        f"slack: {{webhook_url: '{slack.webhook_url}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    daemon = start_daemon(cfg, tmp_path)
    stopped = False
    try:
        wait_for(lambda: _ready(port) == 200, what="the daemon's first check")
        subprocess.run(["pg_ctlcluster", *_cluster(), "stop", "-m", "fast"], check=True)
        stopped = True
        wait_for(lambda: _ready(port) == 503, what="/readyz to report the database down")
        # the release is overwritten while the database is down
        moved = pusher.image(repo, "1.0.0", seed="overwritten")
        time.sleep(2.5)  # a couple of checks fail against the stopped database meanwhile
        subprocess.run(["pg_ctlcluster", *_cluster(), "start"], check=True)
        stopped = False
        wait_for(lambda: _ready(port) == 200, timeout=30, what="/readyz after the restart")
        wait_for(
            lambda: any("moved" in m.get("text", "") for m in slack.messages()),
            timeout=30,
            what="the move alert after the restart",
        )
    finally:
        if stopped:
            subprocess.run(["pg_ctlcluster", *_cluster(), "start"], check=False)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
        slack.stop()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    assert "check_not_claimed" in err or "check_failed" in err  # the outage was seen and logged
    history = run(
        "history",
        f"{registry.host}/{repo}:1.0.0",
        "--json",
        env={"WATCHDOG_DATABASE_URL": pg_url},
        cwd=tmp_path,
    )
    events = [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)]
    assert events == [("first_seen", release.digest), ("moved", moved.digest)]
    assert sum("moved" in m.get("text", "") for m in slack.messages()) == 1
