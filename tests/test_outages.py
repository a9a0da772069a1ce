"""Outage notices (watchdog.outages): a registry unreachable for longer than
``slack.unreachable_after`` gives ONE alert, and ONE recovery message when it answers again: no
flood, however many checks fail in between. End to end, a real registry is stopped and started;
the transitions themselves are table tests; the clock is injected."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from tests.support import images
from tests.support import registry as support_registry
from watchdog import config, metrics, models, outages, service
from watchdog.registry import client as registry_client
from watchdog.store import db, repo


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def notices(store: repo.Store) -> list[dict[str, str]]:
    return [r["notice"] for r in store.outbox.outbox_rows() if r["notice"] is not None]


async def test_one_alert_when_a_registry_stays_unreachable_and_one_when_it_is_back(
    store: repo.Store, own_registry: support_registry.RegistryServer
) -> None:
    with images.Pusher(own_registry.url) as pusher:
        pusher.image("team/app", "1.0.0", seed="a")
    alerting = repo.Store(store.engine, channels=("slack",))
    ref = models.ImageRef.parse(f"{own_registry.host}/team/app")
    watch = config.WatchSettings(repository=ref)
    settings = config.Settings(
        watches=(watch,),
        slack=config.SlackSettings(webhook_url=config.Secret("http://x"), unreachable_after=300),
    )
    clients = service.Clients(
        settings,
        sleep=_no_sleep,
        retry=dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=1, base=0.0),
    )
    clock = Clock()
    checker = service.Checker(settings, alerting, clients, metrics.Metrics(), clock=clock)
    try:
        assert (await checker.check_watch(watch)).ok
        own_registry.stop()
        for _ in range(10):  # ten failed checks a minute apart: the threshold is five minutes
            result = await checker.check_watch(watch)
            assert result.error is not None
            clock.now += dt.timedelta(minutes=1)
        (down,) = notices(alerting)
        assert down["kind"] == "registry_unreachable" and down["registry"] == own_registry.host
        assert down["since"] == "2026-11-28 09:00:00 UTC" and down["error"]
        own_registry.start()
        assert (await checker.check_watch(watch)).ok
        assert (await checker.check_watch(watch)).ok
        down_again, up = notices(alerting)
        assert down_again == down
        assert up == {
            "kind": "registry_recovered",
            "registry": own_registry.host,
            "down_for": "10 min",
        }
        # a short blip (under the threshold) says nothing at all
        own_registry.stop()
        await checker.check_watch(watch)
        own_registry.start()
        await checker.check_watch(watch)
        assert len(notices(alerting)) == 2
    finally:
        await clients.aclose()


def test_the_threshold_is_configurable() -> None:
    raw = {"slack": {"webhook_url": "http://x", "unreachable_after": "2m"}}
    assert config.from_mapping(raw, env={}).slack.unreachable_after == 120.0
    assert config.from_mapping({}, env={}).slack.unreachable_after == 600.0


T0 = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.UTC)
HOST = "r.example"
DOWN = "registry_unreachable"
UP = "registry_recovered"

# a check of HOST, ``minutes`` after T0: "fail" could not reach it, "ok" reached it, "db" failed
# on the database (neither)
Step = tuple[float, str]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([(0, "ok"), (1, "ok")], [None, None]),
        ([(0, "fail"), (1, "fail"), (2, "ok")], [None, None, None]),  # a blip says nothing
        ([(0, "fail"), (4.9, "fail"), (5, "fail"), (6, "fail")], [None, None, DOWN, None]),
        ([(0, "fail"), (5, "fail"), (30, "ok"), (31, "ok")], [None, DOWN, UP, None]),
        # a database failure neither ends the outage nor starts one
        ([(0, "fail"), (3, "db"), (6, "fail"), (7, "db")], [None, None, DOWN, None]),
        ([(0, "db"), (10, "fail")], [None, None]),
        # once over, the next outage counts from its own start
        ([(0, "fail"), (9, "ok"), (10, "fail"), (14, "fail"), (15, "fail")], [None] * 4 + [DOWN]),
    ],
)
def test_notices_due(steps: list[Step], expected: list[str | None]) -> None:
    tracker = outages.Outages(_Unused(), unreachable_after=300, clock=_no_clock)
    got = []
    for minutes, how in steps:
        notice = tracker.notice(
            HOST,
            "connection refused" if how == "fail" else None,
            answered=how == "ok",
            now=T0 + dt.timedelta(minutes=minutes),
        )
        got.append(None if notice is None else notice["kind"])
    assert got == expected


@pytest.mark.parametrize(
    ("down_minutes", "shown"), [(0.5, "under a minute"), (1, "1 min"), (90.4, "90 min")]
)
def test_the_recovery_says_how_long_it_was_down(down_minutes: float, shown: str) -> None:
    tracker = outages.Outages(_Unused(), unreachable_after=0, clock=_no_clock)
    down = tracker.notice(HOST, "x" * 1000, answered=False, now=T0)
    assert down is not None and down["kind"] == DOWN and down["since"] == "2026-11-28 09:00:00 UTC"
    assert len(down["error"]) <= 300 and down["error"].startswith("xxx")
    up = tracker.notice(HOST, None, answered=True, now=T0 + dt.timedelta(minutes=down_minutes))
    assert up == {"kind": UP, "registry": HOST, "down_for": shown}


def test_registries_have_outages_of_their_own() -> None:
    tracker = outages.Outages(_Unused(), unreachable_after=60, clock=_no_clock)
    assert tracker.notice("a.example", "down", answered=False, now=T0) is None
    later = T0 + dt.timedelta(minutes=2)
    assert tracker.notice("b.example", "down", answered=False, now=later) is None
    assert tracker.notice("b.example", None, answered=True, now=later) is None
    down = tracker.notice("a.example", "down", answered=False, now=later)
    assert down is not None and down["registry"] == "a.example"
    assert set(tracker.by_host) == {"a.example"}


async def test_an_alert_that_cannot_be_queued_is_queued_at_the_next_failure(
    tmp_path: Path,
) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'w.db'}")  # not migrated yet: no outbox
    try:
        queue = repo.Store(engine, channels=("slack",))
        clock = Clock()
        tracker = outages.Outages(queue.outbox, unreachable_after=0, clock=clock)
        await tracker.note(HOST, "refused", answered=False)  # due, but the store fails
        assert tracker.by_host[HOST].alerted is False
        db.upgrade(engine)
        clock.now += dt.timedelta(minutes=1)
        await tracker.note(HOST, "refused", answered=False)
        (down,) = notices(queue)
        assert down["kind"] == DOWN and down["since"] == "2026-11-28 09:00:00 UTC"
        clock.now += dt.timedelta(minutes=1)
        await tracker.note(HOST, "refused", answered=False)
        await tracker.note(HOST, None, answered=True)
        assert [n["kind"] for n in notices(queue)] == [DOWN, UP]
    finally:
        engine.dispose()


class _Unused:
    """A notice queue for the tests of ``Outages.notice``, which queues nothing."""

    def enqueue_notice(self, notice: object, now: dt.datetime) -> None:
        raise AssertionError("notice() queues nothing")


def _no_clock() -> dt.datetime:
    raise AssertionError("notice() is given the time")
