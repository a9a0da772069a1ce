"""Bot mode delivers each alert once even when the worker dies between Slack taking an alert and
the ``delivered`` commit: the next worker finds the message in the channel by its metadata
(``conversations.history``, ``conversations.replies`` in a thread) instead of sending it again.
When that lookup cannot tell (``missing_scope``, a rate limit, an outage) the alert is sent
again: at-least-once, warned about and counted. On SQLite and PostgreSQL, against the Slack
stand-in; the clock is injected (the stand-in's ``ts`` follow it), nothing sleeps."""

from __future__ import annotations

import collections
import datetime as dt
import logging
from typing import Any

import pytest

from tests.alerts import test_delivery as delivery
from tests.alerts.test_delivery import NEW, OLD, REPO, T0, FakeTime, K
from tests.support.slack_standin import CHANNEL_ID, TOKEN, Answer, SlackStandIn
from watchdog import metrics, models
from watchdog.alerts import outbox
from watchdog.store import repo

LEASE = 60.0


class Killed(Exception):
    """The process died: nothing in the worker handles this."""


class DiesAtDelivered:
    """The store of a worker that dies right after Slack took an alert: every call goes to the
    real store except the ``delivered`` commit, which never happens."""

    def __init__(self, store: outbox.OutboxStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def mark_delivered(self, *args: Any, **kwargs: Any) -> None:
        raise Killed("SIGKILL between Slack's answer and the delivered commit")


def queue(store: repo.Store, tag: str, kind: K = K.MOVED) -> models.Event:
    record = models.TagRecord(REPO, tag, OLD, NEW, None, models.TagState.DRIFTED, T0, T0, T0)
    event = models.Event(REPO, tag, kind, T0, old_digest=OLD, new_digest=NEW)
    (stored,) = store.apply_check(REPO, T0, [models.Change(REPO, tag, record, event)])
    return stored


def worker(
    store: Any, standin: SlackStandIn, time: FakeTime, m: metrics.Metrics, channel: str
) -> outbox.Worker:
    """A fresh worker with a fresh sender: what a restarted daemon has."""
    return delivery.worker(
        store, standin, time, m, channel, lease=LEASE, policy=outbox.DEFAULT_RETRY
    )


async def crash(store: repo.Store, standin: SlackStandIn, time: FakeTime, channel: str) -> None:
    """Run a worker until it dies after Slack took an alert; then let its lease run out."""
    with pytest.raises(Killed):
        await worker(
            DiesAtDelivered(store.outbox), standin, time, metrics.Metrics(), channel
        ).run_once()
    time.now += dt.timedelta(seconds=LEASE + 1)


def sent(standin: SlackStandIn) -> collections.Counter[int]:
    """How many messages Slack holds about each event id."""
    return collections.Counter(m["metadata"]["event_payload"]["event_id"] for m in standin.posted)


def count(m: metrics.Metrics, result: str) -> float:
    value = m.registry.get_sample_value(
        "tag_watchdog_alerts_total", {"channel": "slack", "result": result}
    )
    return value or 0.0


@pytest.mark.parametrize("channel", [CHANNEL_ID, "#releases"])
async def test_a_crash_after_slack_took_the_alert_does_not_send_it_again(
    alerting: repo.Store, standin: SlackStandIn, channel: str
) -> None:
    """``slack.channel`` as an id, or as a name (the id is then what Slack answered to the
    last alert delivered, kept in the outbox: a restarted worker has it from there)."""
    time = FakeTime()
    first = queue(alerting, "1.0.0")
    assert await worker(alerting.outbox, standin, time, metrics.Metrics(), channel).drain(60) == 0
    second = queue(alerting, "1.1.0")
    await crash(alerting, standin, time, channel)
    assert sent(standin) == {first.id: 1, second.id: 1}
    in_doubt = alerting.outbox.outbox_rows()[1]
    assert in_doubt["status"] == "pending" and in_doubt["sent_at"] is not None

    m = metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m, channel).drain(60) == 0
    assert sent(standin) == {first.id: 1, second.id: 1}  # no second message
    row = alerting.outbox.outbox_rows()[1]
    assert row["status"] == "delivered"
    # the message found is the one Slack holds: its ts serves threads and chat.update
    assert (row["remote_id"], row["remote_channel"]) == (standin.posted[1]["ts"], CHANNEL_ID)
    assert count(m, "found") == 1 and count(m, "delivered") == 0 and count(m, "unverified") == 0
    (lookup,) = standin.lookups
    assert lookup.path == "/api/conversations.history" and lookup.body["channel"] == CHANNEL_ID
    # it looked back from the recorded start of the send, less the margin for clock skew
    assert float(lookup.body["oldest"]) == pytest.approx(
        (in_doubt["sent_at"] - outbox.LOOKUP_MARGIN).timestamp()
    )


async def test_a_follow_up_cut_short_is_found_in_its_thread(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    time = FakeTime()
    moved = queue(alerting, "2.0.0")
    assert (
        await worker(alerting.outbox, standin, time, metrics.Metrics(), CHANNEL_ID).drain(60) == 0
    )
    restored = queue(alerting, "2.0.0", K.RESTORED)
    await crash(alerting, standin, time, CHANNEL_ID)
    m = metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    assert sent(standin) == {moved.id: 1, restored.id: 1}
    assert standin.posted[1]["thread_ts"] == standin.posted[0]["ts"]
    (lookup,) = standin.lookups
    assert lookup.path == "/api/conversations.replies"
    assert lookup.body["ts"] == standin.posted[0]["ts"]
    assert count(m, "found") == 1


async def test_without_the_history_scope_it_is_sent_again_once_warned_once_and_counted(
    alerting: repo.Store, standin: SlackStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime()
    a, b = queue(alerting, "3.0.0"), queue(alerting, "3.1.0")
    # a's send fails with a 500 (did Slack post it? unknown); b's reaches Slack, then the crash
    standin.fail_next(Answer(500, "boom"), method="chat.postMessage")
    await crash(alerting, standin, time, CHANNEL_ID)
    assert sent(standin) == {b.id: 1}
    standin.scopes.discard("channels:history")
    m = metrics.Metrics()
    with caplog.at_level(logging.INFO, logger="watchdog.alerts"):
        assert await worker(alerting.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    # both were looked for, neither lookup could tell: both sent again, b a second time
    assert len(standin.lookups) == 2
    assert sent(standin) == {a.id: 1, b.id: 2}
    assert {r["status"] for r in alerting.outbox.outbox_rows()} == {"delivered"}
    assert count(m, "unverified") == 2 and count(m, "found") == 0
    failed = [r for r in caplog.records if "alert_lookup_failed" in r.getMessage()]
    assert len(failed) == 2
    warned = [r for r in failed if r.levelno == logging.WARNING]
    assert len(warned) == 1  # the missing scope is said loudly once
    text = warned[0].getMessage()
    assert "reason=missing_scope" in text and "needed=channels:history" in text
    assert "add it to the Slack app" in text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(503, {"ok": False, "error": "service_unavailable"}), "unavailable"),
        (Answer(500, "upstream connect error"), "unavailable"),
        (Answer(429, "", (("Retry-After", "30"),)), "rate_limited"),
    ],
    ids=["503", "500", "429"],
)
async def test_a_lookup_that_fails_sends_the_alert_again(
    alerting: repo.Store,
    standin: SlackStandIn,
    caplog: pytest.LogCaptureFixture,
    answer: Answer,
    reason: str,
) -> None:
    time = FakeTime()
    a = queue(alerting, "4.0.0")
    await crash(alerting, standin, time, CHANNEL_ID)
    standin.fail_next(answer, method="conversations.history")
    m = metrics.Metrics()
    with caplog.at_level(logging.WARNING, logger="watchdog.alerts"):
        assert await worker(alerting.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    assert sent(standin) == {a.id: 2}  # at-least-once: never lost for want of a lookup
    assert count(m, "unverified") == 1 and count(m, "retry") == 0
    assert f"reason={reason}" in caplog.text


async def test_a_send_slack_refused_outright_needs_no_lookup(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    """A 429 to chat.postMessage posted nothing: the retry sends without a lookup, and the
    alert counts as plainly delivered."""
    time = FakeTime()
    a = queue(alerting, "5.0.0")
    standin.fail_next(Answer(429, "", (("Retry-After", "5"),)), method="chat.postMessage")
    m = metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    assert sent(standin) == {a.id: 1} and standin.lookups == []
    assert count(m, "delivered") == 1 and count(m, "retry") == 1


# --- an incident's messages ----------------------------------------------------------------------


@pytest.fixture
def grouping(alerting: repo.Store) -> repo.Store:
    """``alerting`` with incidents on (the default window; no wait: the opening is due at once)."""
    return repo.Store(
        alerting.engine,
        channels=("slack",),
        grouping=models.Grouping(window=120.0, wait=0.0, update_interval=0.0),
    )


def change(store: repo.Store, at: dt.datetime, *tags: str, kind: K = K.MOVED) -> list[models.Event]:
    """Record a check at ``at`` that found ``tags`` changed (``kind``: moved, or their
    restores): what joins an incident."""
    changes = []
    for tag in tags:
        state = models.TagState.OK if kind is K.RESTORED else models.TagState.DRIFTED
        record = models.TagRecord(REPO, tag, OLD, NEW, None, state, T0, at, at)
        event = models.Event(REPO, tag, kind, at, old_digest=OLD, new_digest=NEW)
        changes.append(models.Change(REPO, tag, record, event))
    return store.apply_check(REPO, at, changes)


def outbox_ids(standin: SlackStandIn) -> list[int]:
    return [m["metadata"]["event_payload"]["outbox_id"] for m in standin.posted]


async def test_an_incident_opening_cut_short_is_found_by_its_key_and_not_posted_again(
    grouping: repo.Store, standin: SlackStandIn
) -> None:
    time = FakeTime()
    first = change(grouping, T0, "6.0.0", "6.1.0")
    await crash(grouping, standin, time, CHANNEL_ID)
    (opening,) = grouping.outbox.outbox_rows()
    assert opening["part"] == "opening" and opening["status"] == "pending"
    assert opening["sent_at"] is not None and opening["covers"] == first[-1].id
    # while it is in doubt a third tag joins: its news cannot go into a message already sent
    (third,) = change(grouping, time.now, "6.2.0")

    m = metrics.Metrics()
    assert await worker(grouping.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    top, reply = standin.posted  # the opening once, the news in its thread
    assert outbox_ids(standin) == [opening["id"], opening["id"] + 1]
    assert top["thread_ts"] is None and reply["thread_ts"] == top["ts"]
    (lookup,) = standin.lookups
    assert lookup.path == "/api/conversations.history"
    rows = grouping.outbox.outbox_rows()
    assert [(r["part"], r["status"]) for r in rows] == [
        ("opening", "delivered"),
        ("update", "delivered"),
    ]
    # the opening found keeps what it showed when sent; the update showed the third tag
    assert (rows[0]["remote_id"], rows[0]["covers"]) == (top["ts"], first[-1].id)
    assert (rows[1]["remote_id"], rows[1]["covers"]) == (reply["ts"], third.id)
    assert "6.2.0" in reply["text"] and "6.2.0" not in top["text"]
    # the opening redrawn with every tag, in place
    (redraw,) = standin.updates
    assert redraw.body["ts"] == top["ts"] and "6.2.0" in str(redraw.body["blocks"])
    assert count(m, "found") == 1 and count(m, "delivered") == 1


async def test_an_incident_update_cut_short_is_found_in_its_thread_and_its_redraw_redone(
    grouping: repo.Store, standin: SlackStandIn
) -> None:
    time = FakeTime()
    change(grouping, T0, "7.0.0", "7.1.0")
    assert (
        await worker(grouping.outbox, standin, time, metrics.Metrics(), CHANNEL_ID).drain(60) == 0
    )
    (restored,) = change(grouping, time.now, "7.0.0", kind=K.RESTORED)
    await crash(grouping, standin, time, CHANNEL_ID)
    top, reply = standin.posted
    update = grouping.outbox.outbox_rows()[1]
    assert update["part"] == "update" and update["status"] == "pending"
    assert update["sent_at"] is not None and reply["thread_ts"] == top["ts"]

    m = metrics.Metrics()
    assert await worker(grouping.outbox, standin, time, m, CHANNEL_ID).drain(60) == 0
    assert len(standin.posted) == 2  # the reply not posted again
    (lookup,) = standin.lookups
    assert lookup.path == "/api/conversations.replies" and lookup.body["ts"] == top["ts"]
    row = grouping.outbox.outbox_rows()[1]
    assert row["status"] == "delivered"
    assert (row["remote_id"], row["covers"]) == (reply["ts"], restored.id)
    # chat.update is idempotent: the restarted worker simply drew the opening again, the same
    first, again = standin.updates
    assert first.body["ts"] == again.body["ts"] == top["ts"]
    assert first.body["blocks"] == again.body["blocks"]
    assert count(m, "found") == 1 and count(m, "delivered") == 0
