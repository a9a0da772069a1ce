"""Slack taps racing the daemon's own work: a scheduled check of the same repository, and
shutdown. A real daemon, a real registry behind the fault proxy (which holds the restore's PUT
answer to widen the race), the Slack stand-in as Slack's Web API.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import TOKEN, SlackStandIn
from tests.web.test_slack import ALLOWED, SIGNING_SECRET, buttons_of, signed_headers, tap_body
from watchdog.alerts import render

TAGS = ("1.0.0", "2.0.0")
ENV = {"SLACK_TOKEN": TOKEN, "SIGNING": SIGNING_SECRET}
HOLD = 2.5  # seconds the proxy holds the answer to the restore's PUT (the tag is already put back)


@dataclasses.dataclass
class Setup:
    daemon: subprocess.Popen[str]
    port: int
    cfg: Path
    ref: str  # the watched repository, as the daemon sees it (through the proxy)
    repo: str
    proxy: faultproxy.FaultProxy
    standin: SlackStandIn
    release: dict[str, str]  # tag -> digest released
    restore_buttons: dict[str, dict[str, Any]]  # tag -> the Restore button of its move alert
    log: Path

    def tap(self, tag: str) -> httpx.Response:
        body = tap_body(self.restore_buttons[tag])
        return httpx.post(
            f"http://127.0.0.1:{self.port}/slack/actions",
            content=body,
            headers=signed_headers(body),
            timeout=10,
        )

    def hold_put(self, tag: str) -> threading.Event:
        """Hold the answer to the PUT of ``tag`` for HOLD seconds (it has reached the registry:
        the tag answers the restored digest meanwhile); the event is set when the PUT is held."""
        held = threading.Event()

        def hold(answer: faultproxy.Answer, _: faultproxy.Seen) -> faultproxy.Answer:
            held.set()
            time.sleep(HOLD)
            return answer

        self.proxy.add("PUT", f"/v2/{self.repo}/manifests/{tag}$", transform=hold, times=1)
        return held

    def history(self, tag: str) -> list[dict[str, Any]]:
        out = run(
            "history",
            f"{self.ref}:{tag}",
            "--json",
            "-c",
            str(self.cfg),
            cwd=self.cfg.parent,
            env=ENV,
        )
        assert out.returncode == 0, out.stderr
        return list(json.loads(out.stdout))


@pytest.fixture
def setup(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Any,
) -> Iterator[Setup]:
    proxy = make_fault_proxy(registry)
    release = {t: pusher.image(repo, t, seed=f"release-{t}").digest for t in TAGS}
    port = free_port()
    cfg = tmp_path / "c.yaml"
    log = tmp_path / "daemon.log"
    with SlackStandIn() as standin, log.open("w") as log_file:
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1s\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\n"
            "incidents: {wait: 0s, window: 0s, update_interval: 0s}\n"  # an alert (and its buttons) per tag
            f"watches: [{{repository: '{proxy.host}/{repo}', on_move: alert}}]\n"
            "slack: {token: '${SLACK_TOKEN}', channel: '#releases', "
            f"signing_secret: '${{SIGNING}}', allowed_users: [{ALLOWED}], "
            f"base_url: '{standin.base_url}'}}\n"
        )
        daemon = start_daemon(cfg, tmp_path, ENV, log=log_file)
        try:
            wait_for(lambda: http_status(port) == 200, what="the daemon to be ready")
            for t in TAGS:
                pusher.image(repo, t, seed=f"rebuilt-{t}")

            def restore_buttons() -> dict[str, dict[str, Any]]:
                found = {}
                for m in standin.messages():
                    b = buttons_of(m).get(render.ACTION_RESTORE)
                    if b:
                        found[json.loads(b["value"])["ref"].rsplit(":", 1)[1]] = b
                return found if set(found) == set(TAGS) else {}

            buttons = wait_for(restore_buttons, what="the move alerts with their buttons")
            yield Setup(
                daemon,
                port,
                cfg,
                f"{proxy.host}/{repo}",
                repo,
                proxy,
                standin,
                release,
                buttons,
                log,
            )
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()


def hang_up_mid_body(port: int, path: str) -> None:
    """Send a request's headers and a tenth of its declared body, then close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
            + b"payload="
            + b"x" * 92
        )
        time.sleep(0.2)


def test_a_scheduled_check_waits_for_a_restore_started_from_slack(setup: Setup) -> None:
    # (and first: clients hanging up half-way through a body are dropped without a traceback)
    for path in ("/slack/actions", "/hooks/registry", "/api/v1/accept"):
        hang_up_mid_body(setup.port, path)
    held = setup.hold_put("1.0.0")
    assert setup.tap("1.0.0").status_code == 200
    assert held.wait(10), "the restore's PUT never came"
    # The tag answers the release again while the restore waits for its PUT's answer; the watch
    # is due every second, so without the lock two or three checks would see it now and take it
    # for someone else's revert.
    wait_for(
        lambda: any("*Restored* by" in json.dumps(u.body) for u in setup.standin.updates),
        what="the outcome in the alert",
    )
    time.sleep(1.5)  # a check or two after the restore
    kinds = [e["kind"] for e in setup.history("1.0.0")]
    assert kinds.count("restored") == 1
    assert "reverted" not in kinds, kinds
    assert not any("put back by someone else" in json.dumps(m) for m in setup.standin.messages())
    log = setup.log.read_text()
    assert "slack_action_dropped reason=client_gone" in log
    assert "Traceback" not in log and "ClientDisconnect" not in log, log


def test_shutdown_lets_a_tap_under_way_finish_and_refuses_new_ones(setup: Setup) -> None:
    held = setup.hold_put("1.0.0")
    assert setup.tap("1.0.0").status_code == 200
    assert held.wait(10), "the restore's PUT never came"
    setup.daemon.send_signal(signal.SIGTERM)
    wait_for(lambda: http_status(setup.port) == 503, what="the daemon to be stopping")
    late = setup.tap("2.0.0")
    assert late.status_code == 503 and "tap again" in late.text
    told = wait_for(lambda: setup.standin.ephemerals, what="the message to the person")
    assert "restarting" in told[0].body["text"]
    assert setup.daemon.wait(timeout=40) == 0
    err = setup.log.read_text()
    assert "slack_action_refused reason=stopping" in err
    assert "cancelled_on_shutdown" not in err and "Traceback" not in err, err
    # the restore under way when the signal came finished, recorded and reported
    assert "restored" in [e["kind"] for e in setup.history("1.0.0")]
    assert any("*Restored* by" in json.dumps(u.body) for u in setup.standin.updates)
    # the tap refused during shutdown did nothing
    assert "restored" not in [e["kind"] for e in setup.history("2.0.0")]
