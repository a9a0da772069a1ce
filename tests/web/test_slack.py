"""Slack one-tap Restore / Accept: buttons on the alert, ``/slack/actions`` on a real daemon.

The end-to-end test runs the real daemon against the real registry, with the Slack stand-in as
Slack's Web API; the requests Slack would send are built here the way Slack documents them
(``payload=<JSON>``, form-encoded, signed ``v0=HMAC-SHA256(secret, "v0:<ts>:<body>")``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import TOKEN, SlackStandIn
from watchdog import config, errors, models
from watchdog.alerts import render
from watchdog.registry import media
from watchdog.web import slack as web_slack

SIGNING_SECRET = "signing-secret-for-tests-0123456789"
ALLOWED = "U0ALLOWED1"
STRANGER = "U0STRANGER"


def sign(body: bytes, timestamp: int | str, secret: str = SIGNING_SECRET) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def tap_body(
    button: dict[str, Any],
    *,
    user: str = ALLOWED,
    name: str = "alice",
    channel: str = "C0STANDIN",
    message_ts: str = "1700000000.000001",
) -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": name, "name": name, "team_id": "T0TEAM"},
        "api_app_id": "A0APP",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
        "channel": {"id": channel, "name": "releases"},
        "message": {"ts": message_ts, "type": "message"},
        "response_url": "https://hooks.invalid/actions/T0/1/x",
        "actions": [
            {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": "b",
                "value": button["value"],
                "action_ts": "1700000001.000001",
            }
        ],
    }
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def signed_headers(body: bytes, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(body, ts, secret),
    }


def buttons_of(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for block in message.get("blocks", []):
        if block.get("type") == "actions":
            for element in block["elements"]:
                out[element["action_id"]] = element
    return out


# --- rendering -----------------------------------------------------------------------------------

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def moved_event(**kw: Any) -> models.Event:
    base = models.Event(
        "ghcr.io/deephaven/server",
        "0.15.0",
        models.EventKind.MOVED,
        dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC),
        old_digest=OLD,
        new_digest=NEW,
        id=42,
    )
    return dataclasses.replace(base, **kw)


def test_a_move_alert_carries_restore_and_accept_buttons_in_bot_mode() -> None:
    message = render.render_event(moved_event(), render.Context(on_move="alert", buttons=True))
    buttons = buttons_of({"blocks": message.blocks})
    restore_b, accept_b = buttons[render.ACTION_RESTORE], buttons[render.ACTION_ACCEPT]
    assert restore_b["text"]["text"] == f"Restore 0.15.0 to {models.short_digest(OLD)}"
    assert json.loads(restore_b["value"]) == {
        "event": 42,
        "ref": "ghcr.io/deephaven/server:0.15.0",
        "digest": OLD,
    }
    assert json.loads(accept_b["value"])["digest"] == NEW
    assert accept_b["confirm"]["confirm"]["text"] == "Accept"  # trusting the intruder: confirm
    confirm = accept_b["confirm"]
    assert confirm["text"]["type"] == "plain_text" and NEW in confirm["text"]["text"]
    # Block Kit limits: button text 75, value 2000; dialog title 100, text 300, buttons 30
    for field, limit in [("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)]:
        assert len(confirm[field]["text"]) <= limit, field
    for b in (restore_b, accept_b):
        assert len(b["text"]["text"]) <= 75 and len(b["value"]) <= 2000
    assert "confirm" not in restore_b  # the safe action is one tap
    # the event id stays the last block, the buttons just above it
    assert message.blocks[-2]["type"] == "actions"


@pytest.mark.parametrize(
    ("event", "on_move", "expected"),
    [
        (moved_event(), "restore", set()),  # the watchdog restores by itself: nothing to tap
        (moved_event(kind=models.EventKind.DELETED, new_digest=None), "alert", {"restore"}),
        (moved_event(kind=models.EventKind.RESTORE_FAILED, new_digest=OLD), "restore", {"restore"}),
        (moved_event(kind=models.EventKind.ACCEPTED), "alert", set()),
        (moved_event(kind=models.EventKind.RESTORED, new_digest=OLD), "alert", set()),
        # something keeps pushing: put the release back, or accept what is pushed
        (moved_event(kind=models.EventKind.RESTORE_STOPPED), "restore", {"restore", "accept"}),
    ],
)
def test_which_events_get_which_buttons(
    event: models.Event, on_move: str, expected: set[str]
) -> None:
    message = render.render_event(event, render.Context(on_move=on_move, buttons=True))
    assert {k.rsplit(".", 1)[1] for k in buttons_of({"blocks": message.blocks})} == expected


def test_no_buttons_without_the_signing_secret_or_in_webhook_mode() -> None:
    item = models.OutboxItem(
        id=1, channel="slack", attempts=1, created_at=moved_event().at, event=moved_event()
    )
    bot = config.SlackSettings(token=config.Secret("xoxb-x"), channel="#r")
    webhook = config.SlackSettings(webhook_url=config.Secret("https://hooks.example/x"))
    full = bot.model_copy(
        update={"signing_secret": config.Secret(SIGNING_SECRET), "allowed_users": (ALLOWED,)}
    )
    for settings, has in [(bot, False), (webhook, False), (full, True)]:
        message = render.render_item(item, config.Settings(slack=settings))
        assert bool(buttons_of({"blocks": message.blocks})) is has, settings


def test_an_action_by_a_slack_user_is_shown_as_a_mention() -> None:
    event = moved_event(kind=models.EventKind.RESTORED, actor=f"slack:{ALLOWED} (alice)")
    texts = json.dumps(render.render_event(event).blocks)
    assert f"<@{ALLOWED}> (alice) put" in texts
    forged = moved_event(kind=models.EventKind.RESTORED, actor="slack:<!channel> (x)")
    assert "<!channel>" not in json.dumps(render.render_event(forged).blocks)


@pytest.mark.parametrize(
    ("slack_cfg", "problem"),
    [
        ({"webhook_url": "https://hooks.example/x", "signing_secret": "s"}, "needs slack.token"),
        ({"token": "xoxb-1", "channel": "#r", "signing_secret": "s"}, "slack.allowed_users"),
        ({"token": "xoxb-1", "channel": "#r", "allowed_users": [ALLOWED]}, "slack.signing_secret"),
        (
            {"token": "xoxb-1", "channel": "#r", "signing_secret": "s", "allowed_users": ["bob"]},
            "not a Slack user id",
        ),
    ],
)
def test_half_a_button_setup_is_a_config_error(slack_cfg: dict[str, Any], problem: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        config.from_mapping({"slack": slack_cfg}, env={})
    assert problem in str(caught.value)


# --- signature and payload -----------------------------------------------------------------------

NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("timestamp", "signature_", "expected"),
    [
        (str(NOW), sign(b"body", NOW), None),
        (str(NOW - 299), sign(b"body", NOW - 299), None),
        (None, sign(b"body", NOW), "unsigned"),
        (str(NOW), None, "unsigned"),
        (str(NOW), sign(b"body", NOW, "another-secret"), "bad_signature"),  # forged
        (str(NOW), sign(b"other body", NOW), "bad_signature"),  # tampered
        (str(NOW - 301), sign(b"body", NOW - 301), "stale"),  # replayed later
        (str(NOW + 301), sign(b"body", NOW + 301), "stale"),
        # forged and old: the HMAC is judged first, so a forgery is never called merely stale
        (str(NOW - 3600), sign(b"body", NOW - 3600, "another-secret"), "bad_signature"),
        ("12ab", "v0=00", "bad_signature"),
        ("\uff19\uff19", "v0=00", "bad_signature"),  # non-ASCII digits (fullwidth nines)
        (str(NOW), "v0=\u00ff\u00ff", "bad_signature"),  # a non-ASCII header (latin-1 decoded)
        (str(NOW), "v0=" + "0" * 500, "bad_signature"),
    ],
)
def test_check_signature(
    timestamp: str | None, signature_: str | None, expected: str | None
) -> None:
    secret = config.Secret(SIGNING_SECRET)
    got = web_slack.check_signature(secret, b"body", timestamp, signature_, now=lambda: NOW)
    assert got == expected


def test_check_signature_takes_a_body_that_is_not_utf8() -> None:
    secret = config.Secret(SIGNING_SECRET)
    body = b"payload=\xff\xfe"
    assert (
        web_slack.check_signature(secret, body, str(NOW), sign(body, NOW), now=lambda: NOW) is None
    )
    assert web_slack.check_signature(secret, body, str(NOW), sign(b"x", NOW), now=lambda: NOW) == (
        "bad_signature"
    )


def test_a_signature_is_taken_once_within_the_window() -> None:
    clock = [1000.0]
    replays = web_slack.Replays(now=lambda: clock[0])
    assert replays.take("v0=aa") is None and replays.take("v0=bb") is None
    assert replays.take("v0=aa") == "replayed"
    # remembered longer than a timestamp stays acceptable on either side of now (2 x 5 min)...
    clock[0] += 2 * web_slack.MAX_AGE
    assert replays.take("v0=aa") == "replayed"
    # ...then forgotten: the timestamp check refuses such a request by then
    clock[0] += web_slack.REMEMBER
    assert replays.take("v0=aa") is None


def test_a_full_replay_memory_refuses_rather_than_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_slack, "MAX_REMEMBERED", 3)
    clock = [0.0]
    replays = web_slack.Replays(now=lambda: clock[0])
    assert [replays.take(f"v0={i}") for i in range(3)] == [None, None, None]
    assert replays.take("v0=new") == "overloaded"
    assert replays.take("v0=0") == "replayed"  # the oldest is still remembered
    clock[0] += web_slack.REMEMBER + 1
    assert replays.take("v0=new") is None


def test_a_long_tag_is_cut_in_the_restore_label_never_the_digest() -> None:
    tag = "1.2.3-" + "x" * 120  # tags may be 128 characters
    message = render.render_event(
        moved_event(tag=tag), render.Context(on_move="alert", buttons=True)
    )
    label = buttons_of({"blocks": message.blocks})[render.ACTION_RESTORE]["text"]["text"]
    assert len(label) <= 75
    assert label.startswith("Restore 1.2.3-x") and "…" in label
    assert label.endswith(f" to {models.short_digest(OLD)}")


def test_parse_tap() -> None:
    button = {
        "action_id": render.ACTION_RESTORE,
        "value": render.button_value(moved_event(), OLD),
    }
    tap = web_slack.parse_tap(tap_body(button, name="al<!here>ice"))
    assert tap.ref.name == "ghcr.io/deephaven/server" and tap.ref.tag == "0.15.0"
    assert (tap.digest, tap.event_id, tap.user) == (OLD, 42, ALLOWED)
    assert tap.actor == f"slack:{ALLOWED} (alhereice)"
    assert (tap.channel, tap.message_ts) == ("C0STANDIN", "1700000000.000001")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "payload=<JSON>"),
        (b"payload=%7Bnot-json", "payload=<JSON>"),
        (b"payload=" + urllib.parse.quote('{"type":"view_submission"}').encode(), "block_actions"),
        (
            tap_body({"action_id": "other.action", "value": "{}"}),
            "unknown action",
        ),
        (
            tap_body({"action_id": render.ACTION_ACCEPT, "value": '{"ref": "x", "digest": "y"}'}),
            "not one of ours",
        ),
        (
            tap_body(
                {
                    "action_id": render.ACTION_ACCEPT,
                    "value": json.dumps({"ref": "a/b:1", "digest": "sha256:1"}),
                }
            ),
            "not one of ours",
        ),
        (tap_body({"action_id": render.ACTION_ACCEPT, "value": "{}"}, user=""), "no Slack user"),
    ],
)
def test_parse_tap_refuses_what_is_not_our_button(body: bytes, fragment: str) -> None:
    with pytest.raises(errors.UsageError) as caught:
        web_slack.parse_tap(body)
    assert fragment in str(caught.value)


# --- end to end ------------------------------------------------------------------------------------


def test_one_tap_restore_and_accept_on_a_real_daemon(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    port = free_port()
    cfg = tmp_path / "c.yaml"
    with SlackStandIn() as standin:
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1s\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\n"
            # every move an incident of its own (the second move is a new alert to tap)
            "incidents: {wait: 0s, window: 0s, update_interval: 0s}\n"
            f"watches: [{{repository: '{registry.host}/{repo}', on_move: alert}}]\n"
            "slack: {token: '${SLACK_TOKEN}', channel: '#releases', "
            f"signing_secret: '${{SIGNING}}', allowed_users: [{ALLOWED}], "
            f"base_url: '{standin.base_url}'}}\n"
        )
        daemon = start_daemon(cfg, tmp_path, {"SLACK_TOKEN": TOKEN, "SIGNING": SIGNING_SECRET})
        tag_url = f"{registry.url}/v2/{repo}/manifests/0.15.0"

        def answers() -> str:
            return httpx.head(tag_url, headers={"Accept": media.ACCEPT}).headers[
                "docker-content-digest"
            ]

        def history() -> list[dict[str, Any]]:
            ref = f"{registry.host}/{repo}:0.15.0"
            return c.get("/api/v1/history", params={"ref": ref}).json()["events"]

        def alert_about(digest: str) -> dict[str, Any] | None:
            for m in standin.messages():
                if buttons_of(m) and json.dumps(m).count(digest):
                    b = buttons_of(m).get(render.ACTION_ACCEPT)
                    if b and json.loads(b["value"])["digest"] == digest:
                        return m
            return None

        try:
            wait_for(lambda: http_status(port) == 200, what="the daemon to be ready")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                rebuilt = pusher.index(repo, "0.15.0", seed="rebuilt")
                alert = wait_for(lambda: alert_about(rebuilt.digest), what="the move alert")
                restore_b = buttons_of(alert)[render.ACTION_RESTORE]
                assert json.loads(restore_b["value"])["digest"] == release.digest

                # Refused, each of them, and nothing changes.
                body = tap_body(restore_b)
                stale_ts = int(time.time()) - 6 * 60
                refusals = [
                    ({"Content-Type": "application/x-www-form-urlencoded"}, 401),  # unsigned
                    (signed_headers(body, secret="forged-secret"), 401),
                    (signed_headers(body, timestamp=stale_ts), 401),
                ]
                for headers, status in refusals:
                    resp = c.post("/slack/actions", content=body, headers=headers)
                    assert resp.status_code == status, (headers, resp.text)
                stranger = tap_body(restore_b, user=STRANGER, name="mallory")
                resp = c.post("/slack/actions", content=stranger, headers=signed_headers(stranger))
                assert resp.status_code == 200  # Slack shows the refusal to that person only
                told = wait_for(lambda: standin.ephemerals, what="the ephemeral refusal")
                assert told[0].body["user"] == STRANGER
                assert "allowed_users" in told[0].body["text"]
                assert answers() == rebuilt.digest
                assert not {"restored", "accepted"} & {e["kind"] for e in history()}
                assert not standin.updates

                # The allowed person taps Restore: "Restoring…" at once, then the outcome.
                taken = signed_headers(body)
                resp = c.post("/slack/actions", content=body, headers=taken)
                assert resp.status_code == 200 and resp.content == b""
                wait_for(lambda: len(standin.updates) == 2, what="progress and outcome updates")
                progress, update = (u.body for u in standin.updates)
                assert "Restoring, tapped by" in json.dumps(progress)
                # the buttons stay while it runs: should it never finish, nothing is lost
                assert set(buttons_of(progress)) == {render.ACTION_RESTORE, render.ACTION_ACCEPT}
                assert answers() == release.digest
                restored = [e for e in history() if e["kind"] == "restored"]
                assert len(restored) == 1
                assert restored[0]["actor"] == f"slack:{ALLOWED} (alice)"
                assert update["ts"] == "1700000000.000001" and update["channel"] == "C0STANDIN"
                assert not buttons_of(update)
                assert f"*Restored* by <@{ALLOWED}>" in json.dumps(update)
                assert "Recorded since" in json.dumps(update)

                # The same request again (a replay, within the 5 minutes): refused, not re-run.
                resp = c.post("/slack/actions", content=body, headers=taken)
                assert resp.status_code == 401 and "replayed" in resp.text
                # A second, freshly signed tap of that button (a double tap, or a replay after a
                # restart): the restore is done, so nothing is done again and the outcome stays.
                again = signed_headers(body, timestamp=int(time.time()) - 2)
                resp = c.post("/slack/actions", content=body, headers=again)
                assert resp.status_code == 200
                told = wait_for(lambda: standin.ephemerals[1:], what="the 'already' answer")
                assert "already answers" in told[0].body["text"]
                assert len(standin.updates) == 2
                assert [e["kind"] for e in history()].count("restored") == 1

                # ... and the restore is an event alerted like any other, naming who did it.
                wait_for(
                    lambda: any(
                        f"<@{ALLOWED}> (alice) put" in json.dumps(m)
                        and "Release tag restored" in json.dumps(m)
                        for m in standin.messages()
                    ),
                    what="the restored alert",
                )

                # A deliberate re-release: the first alert's Accept is stale (that digest is no
                # longer what the tag answers), the new alert's Accept records it.
                deliberate = pusher.index(repo, "0.15.0", seed="deliberate")
                second = wait_for(lambda: alert_about(deliberate.digest), what="the second alert")
                old_accept = tap_body(buttons_of(alert)[render.ACTION_ACCEPT])
                c.post("/slack/actions", content=old_accept, headers=signed_headers(old_accept))
                wait_for(lambda: len(standin.updates) == 3, what="the refusal update")
                assert "nothing was done" in json.dumps(standin.updates[2].body)
                assert "accepted" not in {e["kind"] for e in history()}

                accept = tap_body(buttons_of(second)[render.ACTION_ACCEPT], message_ts="17.2")
                c.post("/slack/actions", content=accept, headers=signed_headers(accept))
                wait_for(lambda: len(standin.updates) == 4, what="the accept update")
                assert "*Accepted* by" in json.dumps(standin.updates[3].body)
                accepted = [e for e in history() if e["kind"] == "accepted"]
                assert [(e["actor"], e["new_digest"]) for e in accepted] == [
                    (f"slack:{ALLOWED} (alice)", deliberate.digest)
                ]
                tags = c.get("/api/v1/tags").json()["tags"]
                assert tags[0]["recorded_digest"] == deliberate.digest
                assert answers() == deliberate.digest
                counted = {
                    (s.labels["action"], s.labels["result"]): s.value
                    for f in text_string_to_metric_families(c.get("/metrics").text)
                    if f.name == "tag_watchdog_slack_actions"
                    for s in f.samples
                    if s.name.endswith("_total")
                }
                assert counted == {
                    ("unknown", "unsigned"): 1,
                    ("unknown", "bad_signature"): 1,
                    ("unknown", "stale"): 1,
                    ("unknown", "replayed"): 1,
                    ("restore", "not_allowed"): 1,
                    ("restore", "restored"): 1,
                    ("restore", "already"): 1,
                    ("accept", "refused"): 1,
                    ("accept", "accepted"): 1,
                }
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    for reason in ("unsigned", "bad_signature", "stale", "replayed", "not_allowed"):
        assert f"slack_action_refused reason={reason}" in err, reason
    assert SIGNING_SECRET not in err and TOKEN not in err


def test_actions_are_refused_when_buttons_are_not_configured(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str
) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\nwatches: ['{registry.host}/{repo}']\n"
    )
    daemon = start_daemon(cfg, tmp_path)
    try:
        wait_for(lambda: http_status(port, "/healthz") == 200, what="the daemon")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            body = b"payload=%7B%7D"
            resp = c.post("/slack/actions", content=body, headers=signed_headers(body))
            assert resp.status_code == 403 and "slack.signing_secret" in resp.json()["error"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
    assert daemon.returncode == 0


def test_a_payload_nested_too_deep_is_refused_not_a_crash() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(errors.UsageError, match="payload=<JSON>"):
        web_slack.parse_tap(urllib.parse.urlencode({"payload": deep}).encode())
