"""Secrets never leak: registry passwords, tokens and URLs with credentials are planted as markers and
searched for in every output a user or an operator sees: stdout, stderr (debug logs included),
`config check`, /metrics, and the database file itself."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, run
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn

API_TOKEN = "api-token-MARKER-7f3a"
HOOK_TOKEN = "hook-token-MARKER-9c1d"
HUB_TOKEN = "dockerhub-token-MARKER-51e0"


def test_no_secret_in_any_output_or_the_database(
    tmp_path: Path, basic_registry: support_registry.RegistryServer, repo: str, make_pusher: object
) -> None:
    pusher: images.Pusher = make_pusher(basic_registry)  # type: ignore[operator]
    pusher.index(repo, "1.0.0", seed="a")
    password = basic_registry.password
    assert password
    port = free_port()
    db_file = tmp_path / "w.db"

    def config(pw: str) -> Path:
        path = tmp_path / f"c-{len(pw)}.yaml"
        path.write_text(
            f"database_url: sqlite:///{db_file}\ninterval: 1s\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{port}', api_token: '${{API_TOKEN}}'}}\n"
            f"hooks: {{registry_token: '${{HOOK_TOKEN}}', dockerhub_token: '${{HUB_TOKEN}}'}}\n"
            f"registries:\n  - host: {basic_registry.host}\n    username: {basic_registry.username}\n"
            f"    password: '${{REG_PW}}'\n"
            f"watches: ['{basic_registry.host}/{repo}']\n"
            "slack: {webhook_url: '${SLACK_URL}'}\n"
        )
        return path

    good, bad_pw = config(password), "wrong-MARKER-" + password[::-1]
    bad = config(bad_pw)
    slack = SlackStandIn().start()
    # the path of an incoming-webhook URL is its secret
    env = {
        "API_TOKEN": API_TOKEN,
        "HOOK_TOKEN": HOOK_TOKEN,
        "HUB_TOKEN": HUB_TOKEN,
        "SLACK_URL": slack.webhook_url,
    }
    webhook_secret = slack.webhook_url.rsplit("/", 1)[1]
    markers = [password, bad_pw, API_TOKEN, HOOK_TOKEN, HUB_TOKEN, webhook_secret]
    outputs: list[str] = []

    def cli(*args: str, pw: str) -> subprocess.CompletedProcess[str]:
        proc = run(*args, "--log-level", "debug", cwd=tmp_path, env={**env, "REG_PW": pw})
        outputs.append(proc.stdout + proc.stderr)
        return proc

    assert cli("scan", "-c", str(good), pw=password).returncode == 0
    pusher.index(repo, "1.0.0", seed="b")  # a move: an alert goes to Slack
    assert cli("scan", "-c", str(good), pw=password).returncode == 1
    assert any("moved" in m.get("text", "") for m in slack.messages())
    slack.stop()  # Slack down: delivery errors must not show the URL either
    pusher.index(repo, "1.0.0", seed="c")
    assert cli("scan", "-c", str(good), pw=password).returncode == 1
    denied = cli("scan", "-c", str(bad), pw=bad_pw)
    assert denied.returncode == 3 and "could not check" in denied.stdout
    for args in (
        ("status",),
        ("history", f"{basic_registry.host}/{repo}:1.0.0"),
        ("config", "check"),
        ("config", "check", "--json"),
    ):
        assert cli(*args, "-c", str(good), pw=password).returncode == 0

    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "--log-level", "debug", "-c", str(bad)],
        cwd=tmp_path,
        env=clean_env({**env, "REG_PW": bad_pw}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and 'result="error"} 1.0' not in metrics:
            with contextlib.suppress(httpx.TransportError):
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            time.sleep(0.2)
        assert 'tag_watchdog_checks_total{registry="' in metrics
        outputs.append(metrics)
        outputs.append(httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).text)
        # the Docker Hub hook carries its token in the URL: neither the debug log nor the answer
        # may repeat it
        hub = httpx.post(
            f"http://127.0.0.1:{port}/hooks/dockerhub?token={HUB_TOKEN}",
            json={"push_data": {"tag": "1.0.0"}, "repository": {"repo_name": "a/b"}},
            timeout=5,
        )
        assert hub.status_code == 200, hub.text
        outputs.append(hub.text)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
    outputs.append(out + err)
    assert "AuthError" in err or "credentials" in err or "401" in err  # the failure is reported

    everything = "\n".join(outputs)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("w.db*"))
    for marker in markers:
        assert marker not in everything, f"secret {marker[:12]}... leaked into output"
        assert marker.encode() not in stored, f"secret {marker[:12]}... stored in the database"
