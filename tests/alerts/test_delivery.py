"""Exactly-once delivery through the outbox: a Slack outage (500s, then 429 with Retry-After,
then OK) on both stores, permanent refusals, and the worker's metrics. The clock is injected and
sleeping only moves it: nothing here waits for real."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from tests.support.slack_standin import CHANNEL_ID, TOKEN, Answer, SlackStandIn
from watchdog import config, errors, metrics, models
from watchdog.alerts import outbox, render, slack
from watchdog.store import repo

K = models.EventKind
REPO = "ghcr.io/deephaven/server"
T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


def moved(store: repo.Store, *tags: str) -> list[models.Event]:
    changes = []
    for tag in tags:
        record = models.TagRecord(REPO, tag, OLD, NEW, None, models.TagState.DRIFTED, T0, T0, T0)
        event = models.Event(REPO, tag, K.MOVED, T0, old_digest=OLD, new_digest=NEW)
        changes.append(models.Change(REPO, tag, record, event))
    return store.apply_check(REPO, T0, changes)


def worker(
    store: outbox.OutboxStore,
    standin: SlackStandIn,
    time: FakeTime,
    m: metrics.Metrics,
    channel: str = "#releases",
    **overrides: Any,
) -> outbox.Worker:
    """A fresh worker with a fresh sender (what a restarted daemon has), on the fake clock;
    ``overrides``: more outbox.Worker arguments."""
    standin.clock = lambda: time.now.timestamp()  # Slack's ts and our clock agree
    sender = slack.BotSender(config.Secret(TOKEN), channel, standin.base_url, timeout=2)
    kwargs: dict[str, Any] = {
        "policy": dataclasses.replace(outbox.DEFAULT_RETRY, base=1.0, factor=2.0, cap=60.0)
    }
    return outbox.Worker(
        store,
        {"slack": sender},
        config.Settings(),
        observer=m,
        clock=time,
        sleep=time.sleep,
        **(kwargs | overrides),
    )


def sample(m: metrics.Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


async def test_an_outage_then_recovery_delivers_every_alert_exactly_once(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    moved(alerting, "1.0.0", "1.1.0", "1.2.0")
    standin.fail_next(
        Answer(500, "boom"),
        Answer(502, "bad gateway"),
        Answer(503, "unavailable"),
        Answer(429, "", (("Retry-After", "30"),)),
        method="chat.postMessage",
    )
    time, m = FakeTime(), metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m, CHANNEL_ID).drain(3600) == 0

    texts = [msg["text"] for msg in standin.messages()]
    assert len(texts) == 3
    for tag in ("1.0.0", "1.1.0", "1.2.0"):
        assert sum(f"{REPO}:{tag} moved" in t for t in texts) == 1
    posts = [r for r in standin.requests if r.path == "/api/chat.postMessage"]
    assert len(posts) == 7  # 4 refused + 3 delivered
    # a 5xx leaves it unknown whether Slack posted: each such row was looked for (and not
    # found) before it was sent again; the 429 said no, so its row was not looked for again
    assert len(standin.lookups) == 3
    assert {r.path for r in standin.lookups} == {"/api/conversations.history"}
    # the 429 said 30 s: its alert was not tried again before that
    assert sum(time.slept) >= 30 and max(time.slept) >= 29
    rows = alerting.outbox.outbox_rows()
    assert {r["status"] for r in rows} == {"delivered"}
    assert sorted(r["attempts"] for r in rows) == [2, 2, 3]
    assert all(r["remote_id"] for r in rows)
    assert sample(m, "tag_watchdog_alerts_total", channel="slack", result="delivered") == 3
    assert sample(m, "tag_watchdog_alerts_total", channel="slack", result="retry") == 4
    assert sample(m, "tag_watchdog_alerts_total", channel="slack", result="found") is None
    assert sample(m, "tag_watchdog_alerts_total", channel="slack", result="unverified") is None
    assert sample(m, "tag_watchdog_alert_outbox_pending") == 0
    # nothing is sent twice, however often the worker runs again
    assert await worker(alerting.outbox, standin, time, m).run_once() == 0
    assert len(standin.messages()) == 3


async def test_a_permanent_refusal_is_marked_failed_with_its_reason_and_counted(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    moved(alerting, "2.0.0")
    standin.fail_next(Answer(200, {"ok": False, "error": "channel_not_found"}))
    time, m = FakeTime(), metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m).drain(60) == 0
    (row,) = alerting.outbox.outbox_rows()
    assert row["status"] == "failed" and row["attempts"] == 1
    assert "channel_not_found" in row["last_error"] and TOKEN not in row["last_error"]
    assert sample(m, "tag_watchdog_alerts_total", channel="slack", result="failed") == 1
    assert standin.messages() == [] and time.slept == []


async def test_drain_gives_up_at_its_deadline_and_leaves_the_alert_queued(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    moved(alerting, "3.0.0")
    standin.stop()
    time, m = FakeTime(), metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m).drain(10) == 1
    assert time.now - T0 <= dt.timedelta(seconds=10)
    (row,) = alerting.outbox.outbox_rows()
    assert row["status"] == "pending" and "unreachable" in row["last_error"]
    assert sample(m, "tag_watchdog_alert_outbox_pending") == 1
    standin.start()
    time.now += dt.timedelta(minutes=5)
    assert await worker(alerting.outbox, standin, time, m).drain(10) == 0
    assert len(standin.messages()) == 1


async def test_follow_ups_go_into_the_first_alert_s_thread(
    alerting: repo.Store, standin: SlackStandIn
) -> None:
    moved(alerting, "4.0.0")
    record = models.TagRecord(REPO, "4.0.0", OLD, OLD, None, models.TagState.OK, T0, T0, T0)
    restored = models.Event(REPO, "4.0.0", K.RESTORED, T0, old_digest=NEW, new_digest=OLD)
    alerting.apply_check(REPO, T0, [models.Change(REPO, "4.0.0", record, restored)])
    time, m = FakeTime(), metrics.Metrics()
    assert await worker(alerting.outbox, standin, time, m).drain(60) == 0
    head, follow_up = standin.messages()
    assert "thread_ts" not in head and follow_up["thread_ts"] == standin.posted[0]["ts"]
    assert "restored" in follow_up["text"]


def test_retry_policy_is_data() -> None:
    policy = dataclasses.replace(outbox.DEFAULT_RETRY, base=2.0, factor=3.0, cap=100.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [2.0, 6.0, 18.0, 54.0, 100.0]
    assert policy.delay(1, retry_after=42.0) == 42.0
    assert policy.delay(1, retry_after=10**6) == policy.max_retry_after


class Flaky:
    """A sender whose first send fails with a bug (not an AlertError), then works."""

    name = "slack"

    def __init__(self) -> None:
        self.sent: list[render.Message] = []
        self.calls = 0

    def send(self, message: render.Message, thread_id: str | None = None) -> str | None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a sender")
        self.sent.append(message)
        return None


async def test_the_running_worker_survives_a_bug_and_stops_when_asked(
    alerting: repo.Store,
) -> None:
    import asyncio

    moved(alerting, "5.0.0")
    sender = Flaky()
    w = outbox.Worker(alerting.outbox, {"slack": sender}, config.Settings(), lease=0.05, poll=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    # the retry comes after the 0.05 s lease; the deadline is only generous for a loaded machine
    deadline = asyncio.get_running_loop().time() + 30
    for _ in range(3000):
        if sender.sent or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(sender.sent) == 1 and sender.calls == 2
    assert alerting.outbox.pending_alerts() == 0


def test_the_lease_is_slack_lease_60s_unless_set(alerting: repo.Store) -> None:
    """How long an alert whose send was interrupted (the daemon died mid-send) waits before it is
    sent again: ``slack.lease``, 60 s by default; the crash tests shorten it."""
    assert config.from_mapping({}, env={}).slack.lease == 60.0
    assert outbox.Worker(alerting.outbox, {}, config.Settings()).lease == 60.0
    short = config.from_mapping({"slack": {"webhook_url": "http://x", "lease": "2s"}}, env={})
    assert outbox.Worker(alerting.outbox, {}, short).lease == 2.0
    with pytest.raises(errors.ConfigError, match=r"slack\.lease.*at least 1s"):
        config.from_mapping({"slack": {"lease": "0.5s"}}, env={})


class SlowSender:
    """A channel that takes ``seconds`` (of the fake clock) per send, and notes how much of the
    row's lease was left when each send started."""

    def __init__(self, store: repo.Store, time: FakeTime, seconds: float) -> None:
        self.store, self.time, self.seconds = store, time, seconds
        self.left: list[float] = []
        self.sent: list[str] = []

    def send(self, message: render.Message, thread_id: str | None = None) -> str | None:
        (row,) = [
            r for r in self.store.outbox.outbox_rows() if f"{REPO}:{r['tag']} " in message.text
        ]
        self.left.append((row["lease_until"] - self.time.now).total_seconds())
        self.sent.append(message.text)
        self.time.now += dt.timedelta(seconds=self.seconds)
        return None


async def test_a_send_never_starts_on_a_lease_nearly_over(alerting: repo.Store) -> None:
    """Slow sends use up the lease of a batch: the rows left are claimed afresh rather than sent
    when another worker (a replica) could be taking them already."""
    moved(alerting, "6.0.0", "6.1.0", "6.2.0")
    time = FakeTime()
    sender = SlowSender(alerting, time, seconds=25)
    w = outbox.Worker(alerting.outbox, {"slack": sender}, config.Settings(), lease=60, clock=time)
    assert await w.run_once() == 3  # claimed at once: 2 sent, then 10 s of the lease were left
    assert len(sender.sent) == 2
    time.now += dt.timedelta(seconds=10)  # its lease over, the third is claimed afresh
    assert await w.run_once() == 1
    assert len(sender.sent) == 3
    assert all(f"6.{i}.0" in "".join(sender.sent) for i in range(3))
    assert min(sender.left) >= outbox.SEND_MARGIN
    assert alerting.outbox.pending_alerts() == 0
