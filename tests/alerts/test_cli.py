"""Alerts as a user meets them: `tag-watchdog alerts test`, `scan` delivering what it queued, and
the daemon (a real `tag-watchdog run` on a real registry) alerting once per move, even when it is
killed with SIGKILL while Slack is down and started again. Slack is the local stand-in."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import TOKEN, WEBHOOK_PATH, Answer, SlackStandIn


def bot_config(
    path: Path,
    standin: SlackStandIn,
    *,
    watch: str | None = None,
    db: str | None = None,
    port: int | None = None,
    incidents: str = "{wait: 0s, update_interval: 0s}",
) -> Path:
    url = db or f"sqlite:///{path.parent / 'w.db'}"
    lines = [
        f"database_url: {url}",
        "interval: 1s",
        "jitter: 0s",
        f"incidents: {incidents}",
        "slack:",
        "  token: ${SLACK_TOKEN}",
        "  channel: '#releases'",
        f"  base_url: {standin.base_url}",
    ]
    if port is not None:
        lines.append(f"http: {{listen: '127.0.0.1:{port}'}}")
    if watch is not None:
        lines += ["watches:", f"  - repository: {watch}"]
    path.write_text("\n".join(lines) + "\n")
    return path


ENV = {"SLACK_TOKEN": TOKEN}


def test_alerts_test_sends_through_every_channel_and_says_when_it_cannot(
    tmp_path: Path, standin: SlackStandIn
) -> None:
    bot = bot_config(tmp_path / "bot.yaml", standin)
    ok = run("alerts", "test", "-c", str(bot), cwd=tmp_path, env=ENV)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "slack: sent"
    (sent,) = standin.messages()
    assert sent["channel"] == "#releases" and "test alert" in sent["text"]

    hook = tmp_path / "hook.yaml"
    hook.write_text("slack: {webhook_url: '${HOOK}'}\n")
    env = {"HOOK": standin.webhook_url}
    assert run("alerts", "test", "-c", str(hook), cwd=tmp_path, env=env).returncode == 0
    assert standin.requests[-1].path == WEBHOOK_PATH

    standin.fail_next(Answer(404, "no_service"))
    refused = run("alerts", "test", "-c", str(hook), cwd=tmp_path, env=env)
    assert refused.returncode == 3
    assert "slack: FAILED: slack webhook: HTTP 404: no_service" in refused.stdout
    wrong = run("alerts", "test", "-c", str(bot), cwd=tmp_path, env={"SLACK_TOKEN": "xoxb-nope"})
    assert wrong.returncode == 3 and "invalid_auth" in wrong.stdout
    for out in (ok, refused, wrong):
        text = out.stdout + out.stderr
        assert TOKEN not in text and "xoxb-nope" not in text
        assert "standin-webhook-secret" not in text and "Traceback" not in text

    none = tmp_path / "none.yaml"
    none.write_text("interval: 1m\n")
    nothing = run("alerts", "test", "-c", str(none), cwd=tmp_path)
    assert nothing.returncode == 2 and "no alert channel configured" in nothing.stderr


def test_scan_delivers_the_alert_it_queued_once(
    tmp_path: Path,
    standin: SlackStandIn,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.image(
        repo, "1.0.0", seed="release", revision="1111111", source="https://git.example/<!channel>"
    )
    cfg = bot_config(tmp_path / "c.yaml", standin, watch=f"{registry.host}/{repo}")
    assert run("scan", "-c", str(cfg), cwd=tmp_path, env=ENV).returncode == 0
    assert standin.messages() == []  # first sight is silent
    rebuilt = pusher.image(
        repo, "1.0.0", seed="rebuild", revision="2222222", created="2026-11-28T08:00:00Z"
    )
    moved = run("scan", "-c", str(cfg), cwd=tmp_path, env=ENV)
    assert moved.returncode == 1, moved.stderr
    (msg,) = standin.messages()
    text = msg["text"] + str(msg["blocks"])
    assert release.digest in text and rebuilt.digest in text
    assert f"tag-watchdog restore -c {cfg} {registry.host}/{repo}:1.0.0" in text  # its config
    assert f"crane tag {registry.host}/{repo}@{release.digest} 1.0.0" in text
    # both images as their config blobs describe them, hostile label escaped
    assert "`1111111`" in text and "`2222222`" in text and "2026-11-28T08:00:00Z" in text
    assert "https://git.example/&lt;!channel&gt;" in text and "<!channel>" not in text
    again = run("scan", "-c", str(cfg), cwd=tmp_path, env=ENV)
    assert again.returncode == 1 and len(standin.messages()) == 1


def _outbox(db_file: Path) -> list[dict[str, Any]]:
    engine = sa.create_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT * FROM outbox")).mappings()]
    finally:
        engine.dispose()


def _start_daemon(cfg: Path, tmp_path: Path, port: int) -> subprocess.Popen[str]:
    proc = start_daemon(cfg, tmp_path, ENV)
    wait_for(lambda: http_status(port) == 200, what="the daemon to be ready")
    return proc


def _stop(proc: subprocess.Popen[str], *, kill: bool = False) -> str:
    if proc.poll() is None:
        if kill:
            proc.kill()  # SIGKILL: no shutdown code runs
        else:
            proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def _count(messages: list[dict[str, Any]], needle: str) -> int:
    return sum(needle in m["text"] for m in messages)


def test_the_daemon_alerts_once_per_move_even_across_sigkill_while_slack_is_down(
    tmp_path: Path,
    standin: SlackStandIn,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    first_release = pusher.index(repo, "0.15.0", seed="a")
    pusher.image(repo, "0.16.0", seed="b")
    port = free_port()
    db_file = tmp_path / "w.db"
    cfg = bot_config(tmp_path / "c.yaml", standin, watch=f"{registry.host}/{repo}", port=port)
    ref = f"{registry.host}/{repo}"
    logs: list[str] = []
    proc = _start_daemon(cfg, tmp_path, port)
    try:
        # end to end: an overwrite reaches Slack once, within one interval (1 s) plus delivery
        started = time.monotonic()
        rebuilt = pusher.index(repo, "0.15.0", seed="a-rebuilt")
        wait_for(lambda: _count(standin.messages(), f"{ref}:0.15.0 moved"), timeout=15)
        assert time.monotonic() - started < 5
        (msg,) = standin.messages()
        body = msg["text"] + str(msg["blocks"])
        assert first_release.digest in body and rebuilt.digest in body
        assert f"tag-watchdog restore -c {cfg} {ref}:0.15.0" in body
        assert "linux/amd64" in body  # the platforms that changed
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'tag_watchdog_alerts_total{channel="slack",result="delivered"} 1.0' in scraped
        assert TOKEN not in scraped

        # Slack goes down; the next move (within the incident's window: it joins the incident
        # as an update to its message) is queued, tried, and the daemon is killed outright
        standin.stop()
        pusher.image(repo, "0.16.0", seed="b-rebuilt")
        # attempts counts claims; last_error is written after the failed send: wait for both,
        # or the kill can land between the claim and the failed send being recorded
        wait_for(
            lambda: any(
                r["part"] == "update" and r["attempts"] >= 1 and r["last_error"]
                for r in _outbox(db_file)
            )
        )
        logs.append(_stop(proc, kill=True))
        assert proc.returncode == -9
        (row,) = [r for r in _outbox(db_file) if r["part"] == "update"]
        assert row["status"] == "pending" and "unreachable" in row["last_error"]

        # Slack is back, so is the daemon: the queued alert goes out, once
        standin.start()
        proc = _start_daemon(cfg, tmp_path, port)
        wait_for(lambda: _count(standin.messages(), f"{ref}:0.16.0 moved"), timeout=20)
        time.sleep(2.5)  # a few more worker rounds and checks: nothing is sent again
    finally:
        logs.append(_stop(proc))
    messages = standin.messages()
    assert _count(messages, f"{ref}:0.15.0 moved") == 1
    assert _count(messages, f"{ref}:0.16.0 moved") == 1
    assert len(messages) == 2
    assert {r["status"] for r in _outbox(db_file)} == {"delivered"}
    # one incident: the second move is a reply in the first message's thread, and the first
    # message was redrawn to list both tags; the secret is nowhere
    first, second = standin.posted
    assert first["thread_ts"] is None and second["thread_ts"] == first["ts"]
    assert standin.updates and standin.updates[-1].body["ts"] == first["ts"]
    redrawn = str(standin.updates[-1].body["blocks"])
    assert f"{ref}:0.15.0" in redrawn and f"{ref}:0.16.0" in redrawn
    assert "alert_delivered" in logs[-1] and "alerts_worker_stopped" in logs[-1]
    for text in logs:
        assert TOKEN not in text and "Traceback" not in text
    assert TOKEN.encode() not in db_file.read_bytes()


def test_the_webhook_url_is_in_no_output_and_not_in_the_database(
    tmp_path: Path,
    standin: SlackStandIn,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    pusher.image(repo, "1.0.0", seed="a")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        "slack: {webhook_url: '${HOOK}'}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    env = {"HOOK": standin.webhook_url}
    outputs = []
    for args in (("scan",), ("config", "check"), ("alerts", "test")):
        done = run(*args, "-c", str(cfg), "--log-level", "debug", cwd=tmp_path, env=env)
        outputs.append(done.stdout + done.stderr)
    pusher.image(repo, "1.0.0", seed="b")
    standin.fail_next(Answer(429, "", (("Retry-After", "0"),)))  # a retry shows in the log
    moved = run("scan", "-c", str(cfg), "--log-level", "debug", cwd=tmp_path, env=env)
    outputs.append(moved.stdout + moved.stderr)
    assert moved.returncode == 1 and "alert_retry" in moved.stderr
    assert _count(standin.messages(), f"{registry.host}/{repo}:1.0.0 moved") == 1
    for text in outputs:
        assert "standin-webhook-secret" not in text and "Traceback" not in text
    assert b"standin-webhook-secret" not in (tmp_path / "w.db").read_bytes()


def test_scan_sends_an_incident_at_once_when_it_ends(
    tmp_path: Path,
    standin: SlackStandIn,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """The scan is over, so are its incidents: their messages do not wait for the rest of a
    burst (here an hour, longer than the scan delivers for)."""
    other = repo + "-b"
    for r in (repo, other):
        pusher.image(r, "1.0.0", seed="a")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        "slack: {webhook_url: '${HOOK}'}\n"
        "incidents: {wait: 1h}\n"
        f"watches: ['{registry.host}/{repo}', '{registry.host}/{other}']\n"
    )
    env = {"HOOK": standin.webhook_url}
    assert run("scan", "-c", str(cfg), cwd=tmp_path, env=env).returncode == 0
    for r in (repo, other):
        pusher.image(r, "1.0.0", seed="b")
    moved = run("scan", "-c", str(cfg), cwd=tmp_path, env=env)
    assert moved.returncode == 1, moved.stderr
    (message,) = standin.messages()
    text = json.dumps(message)
    assert f"{registry.host}/{repo}:1.0.0`" in text and f"{registry.host}/{other}:1.0.0`" in text
    assert "2 release tags moved" in text
    assert {r["status"] for r in _outbox(tmp_path / "w.db")} == {"delivered"}
