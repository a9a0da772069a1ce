"""Delivering incidents through the outbox, on both stores: one message for a burst, what joins
later as a reply and a redraw (bot) or one closing message when the window ends (webhook), and
nothing sent twice. The clock is injected; nothing here waits for real."""

from __future__ import annotations

import datetime as dt
import json

from tests.alerts.test_delivery import FakeTime, worker
from tests.support.slack_standin import CHANNEL_ID, Answer, SlackStandIn
from watchdog import config, metrics, models
from watchdog.alerts import outbox, slack
from watchdog.store import repo

K = models.EventKind
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
API, WEB, ELSEWHERE = "ghcr.io/acme/api", "ghcr.io/acme/web", "ghcr.io/other/db"
GROUPING = models.Grouping(by="namespace", window=120.0, wait=10.0, update_interval=10.0)


def _store(store: repo.Store) -> repo.Store:
    return repo.Store(store.engine, channels=("slack",), grouping=GROUPING)


def _move(store: repo.Store, at: dt.datetime, repository: str, *tags: str) -> list[models.Event]:
    changes = []
    for tag in tags:
        record = models.TagRecord(
            repository, tag, OLD, NEW, None, models.TagState.DRIFTED, at, at, at
        )
        event = models.Event(repository, tag, K.MOVED, at, old_digest=OLD, new_digest=NEW)
        changes.append(models.Change(repository, tag, record, event))
    return store.apply_check(repository, at, changes)


def _restored(store: repo.Store, at: dt.datetime, repository: str, tag: str) -> None:
    record = models.TagRecord(repository, tag, OLD, OLD, None, models.TagState.OK, at, at, at)
    event = models.Event(repository, tag, K.RESTORED, at, old_digest=NEW, new_digest=OLD)
    store.apply_changes(repository, at, [models.Change(repository, tag, record, event)])


def _webhook_worker(store: repo.Store, standin: SlackStandIn, time: FakeTime) -> outbox.Worker:
    sender = slack.WebhookSender(config.Secret(standin.webhook_url), timeout=2)
    return outbox.Worker(store.outbox, {"slack": sender}, config.Settings(), clock=time)


async def test_a_burst_is_one_message_and_what_joins_later_a_reply_and_a_redraw(
    store: repo.Store, standin: SlackStandIn
) -> None:
    s, time, m = _store(store), FakeTime(), metrics.Metrics()
    w = worker(s.outbox, standin, time, m, CHANNEL_ID)
    _move(s, time.now, API, "1.0.0", "1.0")
    time.now += dt.timedelta(seconds=3)
    _move(s, time.now, WEB, "1.0.0")  # same namespace, within the wait: the same message
    _move(s, time.now, ELSEWHERE, "2.0.0")  # another namespace: another incident
    time.now += dt.timedelta(seconds=6)
    assert await w.run_once() == 0  # nothing due before the wait is over
    time.now += dt.timedelta(seconds=5)
    await w.run_once()
    tops = [p for p in standin.posted if p["thread_ts"] is None]
    assert len(tops) == 2
    first = standin.messages()[0]
    text = json.dumps(first)
    assert all(f"{API}:{t}`" in text for t in ("1.0.0", "1.0")) and f"{WEB}:1.0.0`" in text
    assert "3 release tags moved in ghcr.io/acme" in text
    assert ELSEWHERE not in text

    # a restore and one more move of the namespace, after the message went out
    time.now += dt.timedelta(seconds=20)
    _restored(s, time.now, API, "1.0.0")
    _move(s, time.now, WEB, "1.1.0")
    time.now += dt.timedelta(seconds=11)
    await w.run_once()
    assert len([p for p in standin.posted if p["thread_ts"] == tops[0]["ts"]]) == 1
    reply_body = standin.messages()[-1]
    assert "2 more events" in json.dumps(reply_body)
    assert f"{WEB}:1.1.0" in json.dumps(reply_body)
    redrawn = standin.updates[-1].body
    assert redrawn["ts"] == tops[0]["ts"] and redrawn["channel"] == CHANNEL_ID
    assert "4 release tags" in json.dumps(redrawn) and "*restored* by the watchdog" in json.dumps(
        redrawn
    )
    assert len([p for p in standin.posted if p["thread_ts"] is None]) == 2

    # nothing new: nothing sent; a change after the window: a new incident, a new message
    await w.run_once()
    assert len(standin.posted) == 3
    time.now += dt.timedelta(minutes=3)
    _move(s, time.now, API, "1.2.0")
    time.now += dt.timedelta(seconds=11)
    await w.run_once()
    assert len([p for p in standin.posted if p["thread_ts"] is None]) == 3
    assert {r["status"] for r in s.outbox.outbox_rows()} == {"delivered"}
    assert [i.id for i in s.incidents.recent()] == [3, 2, 1]


async def test_a_webhook_gets_one_closing_message_when_the_window_ends(
    store: repo.Store, standin: SlackStandIn
) -> None:
    s, time = _store(store), FakeTime()
    w = _webhook_worker(s, standin, time)
    _move(s, time.now, API, "1.0.0", "1.0")
    time.now += dt.timedelta(seconds=11)
    await w.run_once()
    assert len(standin.messages()) == 1
    # three more events inside the window: nothing until it closes, then one message
    for tag in ("1.0.0", "1.0"):
        time.now += dt.timedelta(seconds=5)
        _restored(s, time.now, API, tag)
    time.now += dt.timedelta(seconds=5)
    _move(s, time.now, WEB, "1.0.0")
    for _ in range(3):
        time.now += dt.timedelta(seconds=30)
        await w.run_once()
        assert len(standin.messages()) == 1
    incident = s.incidents.get(1)
    assert incident is not None
    time.now = incident.closes_at + dt.timedelta(seconds=1)
    await w.run_once()
    messages = standin.messages()
    assert len(messages) == 2
    closing = json.dumps(messages[1])
    assert "Incident 1 closed: 3 release tags" in closing
    assert closing.count("*restored* by the watchdog") == 2
    rows = s.outbox.outbox_rows()
    assert {r["status"] for r in rows} == {"delivered"}
    assert [r["attempts"] for r in rows if r["part"] == "update"] == [1]  # deferrals not counted


async def test_an_opening_refused_for_good_leaves_the_update_to_say_it_all(
    store: repo.Store, standin: SlackStandIn
) -> None:
    s, time, m = _store(store), FakeTime(), metrics.Metrics()
    w = worker(s.outbox, standin, time, m, CHANNEL_ID)
    _move(s, time.now, API, "1.0.0")
    standin.fail_next(Answer(200, {"ok": False, "error": "channel_not_found"}))
    time.now += dt.timedelta(seconds=11)
    await w.run_once()
    assert not standin.posted
    _move(s, time.now, WEB, "1.0.0")
    time.now += dt.timedelta(seconds=11)
    await w.run_once()
    (top,) = standin.posted
    assert top["thread_ts"] is None  # the update had no message to reply to: it is the message
    assert "2 release tags moved" in json.dumps(standin.messages()[0])


async def test_by_default_the_first_change_alerts_at_once_and_updates_gather(
    store: repo.Store, standin: SlackStandIn
) -> None:
    """``incidents`` defaults: no wait for the first message (a single move alerts as promptly
    as before incidents), what joins is told at most every 10 s, in one reply."""
    s = repo.Store(store.engine, channels=("slack",), grouping=models.Grouping())
    time, m = FakeTime(), metrics.Metrics()
    w = worker(s.outbox, standin, time, m, CHANNEL_ID)
    _move(s, time.now, API, "1.0.0")
    await w.run_once()
    assert len(standin.posted) == 1  # at once
    for i, tag in enumerate(("1.0", "latest-1")):
        time.now += dt.timedelta(seconds=3)
        _move(s, time.now, WEB, tag)
        await w.run_once()
        assert len(standin.posted) == 1, i  # gathered, not yet told
    time.now += dt.timedelta(seconds=8)  # 11 s after the first to join
    await w.run_once()
    assert len(standin.posted) == 2
    assert "2 more events" in json.dumps(standin.messages()[-1])
