"""Slack rendering (pure: event + context -> payload) and sending through slack-sdk to a local
stand-in for Slack: content of every message kind, escaping of hostile values, Block Kit limits,
and the translation of Slack's answers into temporary or permanent errors."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
from typing import Any

import pytest

from tests.support.slack_standin import CHANNEL_ID, TOKEN, Answer, SlackStandIn
from watchdog import config, errors, models
from watchdog.alerts import render, slack

K = models.EventKind
REPO = "ghcr.io/deephaven/server"
OLD = "sha256:" + "0123456789abcdef" * 4
NEW = "sha256:" + "fedcba9876543210" * 4
AT = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)
FIRST = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def event(kind: K, *, repository: str = REPO, tag: str = "0.15.0", **kw: Any) -> models.Event:
    fields: dict[str, Any] = {"old_digest": OLD, "new_digest": NEW, "id": 7, **kw}
    return models.Event(repository, tag, kind, AT, **fields)


def everything(message: render.Message) -> str:
    """All text a person could read in a message (fallback and every block)."""
    return message.text + "\n" + json.dumps(message.blocks, ensure_ascii=False)


def sections(message: render.Message) -> list[str]:
    return [b["text"]["text"] for b in message.blocks if b["type"] == "section" and "text" in b]


def test_a_move_says_what_happened_and_how_to_put_it_back() -> None:
    ev = event(K.MOVED, detail={"changed_platforms": ["linux/amd64", "linux/arm64/v8"]})
    msg = render.render_event(ev, render.Context(on_move="alert", first_seen=FIRST))
    text = everything(msg)
    assert msg.blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": f"Release tag moved: {REPO}:0.15.0", "emoji": False},
    }
    assert OLD in text and NEW in text  # full, for copying
    assert models.short_digest(OLD) in text and models.short_digest(NEW) in text
    assert "linux/amd64" in text and "linux/arm64/v8" in text
    assert "2025-01-02 03:04:05 UTC" in text  # first recorded
    assert "2026-11-28 09:30:00 UTC" in text  # move seen
    assert "alerted only" in text
    manual = next(s for s in sections(msg) if "Put it back by hand" in s)
    assert f"tag-watchdog restore {REPO}:0.15.0" in manual
    assert f"crane tag {REPO}@{OLD} 0.15.0" in manual
    # the fallback stands alone (notifications): what moved, both digests, the restore command
    assert msg.text.startswith(f"tag-watchdog: {REPO}:0.15.0 moved")
    assert models.short_digest(OLD) in msg.text and models.short_digest(NEW) in msg.text
    assert f"tag-watchdog restore {REPO}:0.15.0" in msg.text
    restoring = render.render_event(ev, render.Context(on_move="restore"))
    assert "restoring the recorded digest" in everything(restoring)


@pytest.mark.parametrize(
    ("kind", "kw", "expected", "manual"),
    [
        (K.DELETED, {"new_digest": None}, ["Release tag deleted", "MANIFEST_UNKNOWN"], True),
        (K.REAPPEARED, {"detail": {"recorded_digest": OLD}}, ["reappeared", "answers again"], True),
        (
            K.REVERTED,
            {"old_digest": None, "new_digest": OLD},
            ["back at its recorded digest"],
            False,
        ),
        (K.RESTORED, {}, ["Release tag restored", "restored the recorded digest"], False),
        (
            K.RESTORE_FAILED,
            # a restore goes from the overwritten digest (old) to the recorded one (new)
            {
                "old_digest": NEW,
                "new_digest": OLD,
                "detail": {"reason": "layer blob sha256:abc is gone"},
            },
            ["Restore FAILED", "layer blob sha256:abc is gone", "Nothing was changed"],
            True,
        ),
        (
            K.RESTORE_STOPPED,
            {"old_digest": None, "new_digest": None, "detail": {"recorded_digest": OLD}},
            ["Something keeps pushing", "loop protection"],
            True,
        ),
    ],
)
def test_every_event_kind_has_its_message(
    kind: K, kw: dict[str, Any], expected: list[str], manual: bool
) -> None:
    msg = render.render_event(
        event(kind, **kw), render.Context(on_move="restore", first_seen=FIRST)
    )
    text = everything(msg)
    for needle in expected:
        assert needle in text, needle
    assert REPO in msg.text and "0.15.0" in msg.text
    assert ("tag-watchdog restore" in text) is manual
    if manual:
        assert f"crane tag {REPO}@{OLD} 0.15.0" in text


def test_registry_notices_one_down_one_recovered() -> None:
    down = render.render_notice(
        {
            "kind": "registry_unreachable",
            "registry": "ghcr.io",
            "since": "2026-11-28 09:00:00 UTC",
            "error": "connection refused",
        }
    )
    assert "Registry unreachable: ghcr.io" in everything(down)
    assert "connection refused" in down.text and "since 2026-11-28 09:00:00 UTC" in down.text
    up = render.render_notice(
        {"kind": "registry_recovered", "registry": "ghcr.io", "down_for": "12m"}
    )
    assert "reachable again" in up.text and "12m" in everything(up)


def test_hostile_values_are_escaped_everywhere_and_nothing_else_is() -> None:
    hostile = "<!channel> & <https://evil.example|click> >"
    ev = event(
        K.RESTORE_FAILED,
        repository="evil.example/<!channel>&co",
        actor="<@U123> & friends",
        detail={"reason": hostile, "changed_platforms": ["linux/<!here>"]},
    )
    msg = render.render_event(ev)
    for block in msg.blocks:
        if block["type"] == "header":
            continue  # plain_text: Slack never parses it
        raw = json.dumps(block)
        assert "<!channel>" not in raw and "<!here>" not in raw and "<@U123>" not in raw
        assert "<https://" not in raw
    text = everything(msg)
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; &gt;" in text
    assert "&lt;@U123&gt; &amp; friends" in text
    assert "<!channel>" not in msg.text and "&amp;co" in msg.text
    assert render.escape("a*b_c~`d") == "a*b_c~`d"  # only &, <, > are Slack's to escape
    notice = render.render_notice(
        {"kind": "registry_unreachable", "registry": "r", "error": hostile}
    )
    assert "<!channel>" not in everything(notice)


def test_a_move_shows_both_images_created_time_and_labels_escaped() -> None:
    images = {
        "old": {"created": "2024-01-01T00:00:00Z", "revision": "abc123", "source": "https://x/a"},
        "new": {"revision": "<!channel> & `rm`", "source": "https://x/b"},
    }
    msg = render.render_event(event(K.MOVED, detail={"images": images}))
    block = next(s for s in sections(msg) if "Old image" in s)
    assert (
        "*Old image:* created `2024-01-01T00:00:00Z`, revision `abc123`, source `https://x/a`"
        in block
    )
    assert "*New image:* revision `&lt;!channel&gt; &amp; 'rm'`, source `https://x/b`" in block
    assert "Old image" not in everything(render.render_event(event(K.MOVED)))


def test_block_kit_limits_hold_for_huge_values() -> None:
    platforms = [f"linux/arch{i}" + "&" * 50 for i in range(400)]
    ev = event(K.MOVED, detail={"changed_platforms": platforms}, actor="x" * 10_000)
    msg = render.render_event(ev)
    assert len(msg.blocks) <= render.MAX_BLOCKS
    for block in msg.blocks:
        if block["type"] == "section" and "text" in block:
            text = block["text"]["text"]
            assert len(text) <= render.MAX_SECTION
            assert text.count("```") % 2 == 0
            tail = text[text.rfind("&") :] if "&" in text else ""
            assert not tail or ";" in tail  # no half an entity
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= render.MAX_HEADER
    long_code = "```" + "&amp;" * 1000 + "```"
    cut = render.truncate_mrkdwn(long_code, 100)
    assert len(cut) <= 100 and cut.endswith("```") and "&am…" not in cut


# --- sending through slack-sdk -------------------------------------------------------------------


def bot(standin: SlackStandIn, token: str = TOKEN) -> slack.BotSender:
    return slack.BotSender(config.Secret(token), "#releases", standin.base_url, timeout=2)


def hook(standin: SlackStandIn) -> slack.WebhookSender:
    return slack.WebhookSender(config.Secret(standin.webhook_url), timeout=2)


def test_webhook_and_bot_deliver_blocks_and_fallback_and_bot_threads(
    standin: SlackStandIn,
) -> None:
    msg = render.render_event(event(K.MOVED), render.Context(first_seen=FIRST))
    assert hook(standin).send(msg) is None  # webhooks cannot thread
    ts = bot(standin).send(msg)
    assert ts is not None and ts == standin.posted[0]["ts"]
    bot(standin).send(render.render_event(event(K.RESTORED)), thread_id=ts)
    webhook_body, first, follow_up = standin.messages()
    assert webhook_body["text"] == msg.text and webhook_body["blocks"] == msg.blocks
    assert first["channel"] == "#releases" and first["blocks"] == msg.blocks
    assert "thread_ts" not in first
    assert follow_up["thread_ts"] == ts
    assert standin.requests[1].path == "/api/chat.postMessage"
    assert standin.requests[1].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("mode", ["webhook", "bot"])
def test_slack_answers_become_temporary_or_permanent_errors_without_secrets(
    standin: SlackStandIn, mode: str
) -> None:
    sender = hook(standin) if mode == "webhook" else bot(standin)
    msg = render.render_test()
    cases = [
        (Answer(500, "oops"), True, None),
        (Answer(503, {"ok": False, "error": "service_unavailable"}), True, None),
        (Answer(429, "", (("Retry-After", "7"),)), True, 7.0),
        # an HTTP date (in the past: no wait) and garbage (the outbox's backoff decides);
        # tests/test_retry.py has the whole table
        (Answer(429, "", (("Retry-After", "Thu, 01 Jan 1970 00:01:40 GMT"),)), True, 0.0),
        (Answer(429, "", (("Retry-After", "soon"),)), True, None),
        (Answer(404, "channel_not_found"), False, None),
        (Answer(403, "action_prohibited"), False, None),
    ]
    if mode == "bot":
        cases.append((Answer(200, {"ok": False, "error": "invalid_auth"}), False, None))
        cases.append((Answer(200, {"ok": False, "error": "ratelimited"}), True, None))
    for answer, temporary, retry_after in cases:
        standin.fail_next(answer)
        with pytest.raises(errors.AlertError) as caught:
            sender.send(msg)
        exc = caught.value
        assert exc.temporary is temporary, (answer, str(exc))
        assert exc.retry_after == retry_after
        assert TOKEN not in str(exc) and "standin-webhook-secret" not in str(exc)
    standin.stop()
    with pytest.raises(errors.AlertError) as down:
        sender.send(msg)
    assert down.value.temporary and "unreachable" in str(down.value)
    assert "standin-webhook-secret" not in str(down.value) and TOKEN not in str(down.value)


def test_bot_alerts_carry_metadata_and_are_found_again_by_it(
    standin: SlackStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """post() sends the alert's metadata; find() reads the channel's history (newest first,
    paged) or, for a follow-up, its thread, and recognises the message by its send key only."""
    sender = bot(standin)
    assert sender.channel_id is None  # "#releases" is a name: unknown until Slack answers
    since = dt.datetime.fromtimestamp(standin.clock(), dt.UTC) - dt.timedelta(seconds=1)
    head = sender.post(render.render_test(), None, slack.alert_metadata(1, 11, "a" * 32))
    assert head.channel == CHANNEL_ID and sender.channel_id == CHANNEL_ID and head.ts
    (sent,) = standin.messages()
    assert sent["metadata"] == {
        "event_type": "tag_watchdog_alert",
        "event_payload": {"outbox_id": 1, "event_id": 11, "send_key": "a" * 32},
    }
    reply = sender.post(render.render_test(), head.ts, slack.alert_metadata(2, 12, "b" * 32))
    for i in range(7):  # later traffic in the channel, some of it with metadata of its own
        sender.post(render.render_test(), None, slack.alert_metadata(10 + i, None, f"{i:032d}"))
    standin.max_page = 3  # Slack caps some apps' pages (at 15): the lookup pages on
    assert sender.find(CHANNEL_ID, "a" * 32, since) == head
    history = [r for r in standin.lookups if r.path == "/api/conversations.history"]
    assert len(history) == 3  # 7 newer messages, 3 a page: the first alert is on page 3
    assert history[0].body["include_all_metadata"] == "1" and "cursor" not in history[0].body
    assert history[1].body["cursor"] and history[0].body["oldest"] == f"{since.timestamp():.6f}"
    # a thread reply is not in the history: it is looked for in its thread
    assert sender.find(CHANNEL_ID, "b" * 32, since) is None
    assert sender.find(CHANNEL_ID, "b" * 32, since, thread_id=head.ts) == reply
    assert standin.lookups[-1].path == "/api/conversations.replies"
    # not there: an unknown key, or a message older than ``oldest``
    assert sender.find(CHANNEL_ID, "c" * 32, since) is None
    later = dt.datetime.fromtimestamp(float(reply.ts or 0), dt.UTC)
    assert sender.find(CHANNEL_ID, "a" * 32, later) is None
    # more pages than it reads: it cannot tell, and says so
    monkeypatch.setattr(slack, "LOOKUP_MAX_PAGES", 2)
    with pytest.raises(errors.AlertError, match="could not read the history to the end") as many:
        sender.find(CHANNEL_ID, "c" * 32, since)
    assert many.value.temporary
    assert all(TOKEN not in json.dumps(r.body) for r in standin.requests)


def test_a_lookup_without_the_history_scope_names_the_missing_scope(
    standin: SlackStandIn,
) -> None:
    sender = slack.BotSender(config.Secret(TOKEN), CHANNEL_ID, standin.base_url, timeout=2)
    assert sender.channel_id == CHANNEL_ID  # the setting is an id already
    standin.scopes.discard("channels:history")
    since = dt.datetime.fromtimestamp(standin.clock(), dt.UTC)
    with pytest.raises(errors.AlertError) as caught:
        sender.find(CHANNEL_ID, "a" * 32, since)
    assert caught.value.needed_scope == "channels:history" and not caught.value.temporary
    assert "missing_scope (needed: channels:history)" in str(caught.value)
    assert TOKEN not in str(caught.value)
    # posting needs chat:write only: it still works
    assert sender.post(render.render_test()).ts
    standin.fail_next(Answer(429, "", (("Retry-After", "3"),)), method="conversations.history")
    standin.scopes.add("channels:history")
    with pytest.raises(errors.AlertError) as limited:
        sender.find(CHANNEL_ID, "a" * 32, since)
    assert limited.value.status == 429 and limited.value.needed_scope is None


def test_a_wrong_token_is_a_permanent_invalid_auth(standin: SlackStandIn) -> None:
    with pytest.raises(errors.AlertError) as caught:
        bot(standin, token="xoxb-wrong").send(render.render_test())
    assert not caught.value.temporary and "invalid_auth" in str(caught.value)
    assert "xoxb-wrong" not in str(caught.value)


def test_a_second_move_points_back_at_the_record_not_the_first_intruder() -> None:
    third = "sha256:" + "ab" * 32
    msg = render.render_event(
        event(K.MOVED, old_digest=NEW, new_digest=third, detail={"recorded_digest": OLD})
    )
    text = msg.text + json.dumps(msg.blocks)
    assert f"crane tag {REPO}@{OLD} 0.15.0" in text
    assert f"crane tag {REPO}@{NEW} 0.15.0" not in text


def test_restore_messages_name_the_digest_put_back() -> None:
    # a restore's event goes from the overwritten digest (old) to the recorded one (new)
    failed = render.render_event(event(K.RESTORE_FAILED, old_digest=NEW, new_digest=OLD))
    assert f"crane tag {REPO}@{OLD} 0.15.0" in failed.text + json.dumps(failed.blocks)
    restored = render.render_event(event(K.RESTORED, old_digest=NEW, new_digest=OLD))
    assert restored.text.endswith(models.short_digest(OLD))


# --- who pushed, and the commit ---------------------------------------------------------------


def test_a_move_names_who_pushed_when_a_notification_said() -> None:
    pushed_by = {
        "source": "registry",
        "actor": "ci-bot",
        "address": "10.0.0.5:4242",
        "user_agent": "docker/27.1 <script>",
    }
    text = "\n".join(sections(render.render_event(event(K.MOVED, detail={"pushed_by": pushed_by}))))
    assert "*Pushed by:* `ci-bot` from `10.0.0.5:4242` with `docker/27.1 &lt;script&gt;`" in text
    deleted = render.render_event(
        event(
            K.DELETED, new_digest=None, detail={"pushed_by": {"source": "harbor", "actor": "bob"}}
        )
    )
    assert "*Deleted by:* `bob`" in "\n".join(sections(deleted))


def test_a_move_found_by_polling_says_the_pusher_is_unknown() -> None:
    text = "\n".join(sections(render.render_event(event(K.MOVED))))
    assert "*Pushed by:* unknown (found by polling" in text
    # other events do not talk about pushers
    restored = render.render_event(event(K.RESTORED))
    assert "Pushed by" not in everything(restored) and "Deleted by" not in everything(restored)


@pytest.mark.parametrize(
    ("source", "revision", "expected"),
    [
        (
            "https://github.com/deephaven/deephaven-core",
            "ABCDEF1234567",
            "https://github.com/deephaven/deephaven-core/commit/abcdef1234567",
        ),
        (
            "https://github.com/deephaven/deephaven-core.git",
            "a" * 40,
            "https://github.com/deephaven/deephaven-core/commit/" + "a" * 40,
        ),
        (
            "https://gitlab.com/group/sub/project/",
            "0123abc",
            "https://gitlab.com/group/sub/project/-/commit/0123abc",
        ),
        (
            "https://gitlab.example.org/team/app",
            "0123abcd",
            "https://gitlab.example.org/team/app/-/commit/0123abcd",
        ),
        ("https://github.com/deephaven", "0123abcd", None),  # an owner, not a repository
        ("http://github.com/a/b", "0123abcd", None),  # not https
        ("https://evil.example/github.com/a/b", "0123abcd", None),
        ("https://github.com/a/b|x", "0123abcd", None),  # would break the link markup
        ("https://github.com/a/b", "v1.2.3", None),  # a tag name, not a commit
        ("https://github.com/a/b", None, None),
    ],
)
def test_commit_links_only_for_known_forges(
    source: str, revision: str | None, expected: str | None
) -> None:
    assert render.commit_url(source, revision) == expected


def test_the_new_image_links_to_its_commit() -> None:
    images = {"new": {"revision": "def4567", "source": "https://github.com/acme/app"}}
    text = "\n".join(sections(render.render_event(event(K.MOVED, detail={"images": images}))))
    assert "<https://github.com/acme/app/commit/def4567|commit>" in text


# --- golden messages -----------------------------------------------------------------------------

GOLDEN = pathlib.Path(__file__).parents[1] / "data" / "slack_messages.json"


def golden_messages() -> dict[str, dict[str, Any]]:
    """Every event kind in two contexts (alert with buttons and every detail; restore, bare),
    an outcome, each notice and the test message, as sent: text and blocks."""
    rich = {
        "changed_platforms": ["linux/amd64", "linux/arm64/v8"],
        "images": {
            "old": {"created": "2024-01-01T00:00:00Z", "revision": "abc123"},
            "new": {"revision": "def456", "source": "https://example.invalid/src"},
        },
        "recorded_digest": OLD,
        "reason": "layer blob sha256:abc is gone",
        "pushed_by": {"source": "registry", "actor": "ci-bot", "address": "10.0.0.5"},
    }
    alert = render.Context(on_move="alert", first_seen=FIRST, buttons=True)
    restore = render.Context(on_move="restore")
    messages: dict[str, render.Message] = {}
    for kind in K:
        messages[f"{kind.value}/alert"] = render.render_event(
            event(kind, detail=rich, actor="slack:U0123ABCD (alice)"), alert
        )
        messages[f"{kind.value}/restore"] = render.render_event(
            event(kind, old_digest=None, id=None, actor="watchdog"), restore
        )
    messages["outcome"] = render.render_outcome(
        event(K.MOVED, detail=rich), "*Restored* by <@U0123ABCD>.", alert
    )
    notices: list[dict[str, Any]] = [
        {"kind": "registry_unreachable", "registry": "ghcr.io", "since": "09:00", "error": "x"},
        {"kind": "registry_recovered", "registry": "ghcr.io", "down_for": "12m"},
        {"kind": "something_else", "text": "free text & more"},
    ]
    for notice in notices:
        messages[f"notice/{notice['kind']}"] = render.render_notice(notice)
    messages["test"] = render.render_test()
    return {name: {"text": m.text, "blocks": m.blocks} for name, m in messages.items()}


def write_golden() -> None:
    """Rewrite the golden file from the rendering as it is (after a deliberate change of text):
    ``python -c "from tests.alerts import test_slack as t; t.write_golden()"``."""
    text = json.dumps(golden_messages(), indent=1, ensure_ascii=False, sort_keys=True)
    GOLDEN.write_text(text + "\n", encoding="utf-8")


def test_every_message_is_byte_for_byte_the_golden_one() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    actual = golden_messages()
    assert sorted(actual) == sorted(expected)
    assert len(actual) == 2 * len(K) + 5
    for name, message in actual.items():
        assert message == expected[name], name
