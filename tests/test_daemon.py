"""Daemon scheduling rules that need no servers: a notification during a check is never lost;
the slot trigger fires once per slot without drifting."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdog import config, daemon, notifications, service
from watchdog.store import claims, db


class SlowChecker:
    """Stands in for service.Checker: each check waits until the test lets it finish."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def check_watch(self, watch: config.WatchSettings) -> service.CheckResult:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return service.CheckResult(repository=watch.name, registry=watch.repository.host)


async def test_a_notification_during_a_check_asks_for_one_more_check(tmp_path: Path) -> None:
    settings = config.from_mapping({"watches": ["ghcr.io/deephaven/server"]}, {})
    d = daemon.Daemon(settings)
    checker = SlowChecker()
    d.checker = checker  # type: ignore[assignment]
    d.claims = claims.Claims(db.create_engine(f"sqlite:///{tmp_path / 'w.db'}"))
    d.scheduler = AsyncIOScheduler(timezone=dt.UTC)
    d.scheduler.start(paused=True)
    try:
        (watch,) = settings.watches
        running = asyncio.create_task(d._check(watch))
        await asyncio.wait_for(checker.started.wait(), 5)
        push = notifications.RegistryEvent("push", "deephaven/server", "0.15.0", "ghcr.io")
        assert await d.on_registry_events([push, push]) == [watch.name]
        assert await d.on_registry_events([push]) == [watch.name]  # the same burst
        assert watch.name in d.settling and watch.name not in d.recheck
        await asyncio.sleep(daemon.NOTIFIED_SETTLE + 0.1)  # one check for the burst
        assert watch.name in d.recheck and not d.settling
        checker.release.set()
        await asyncio.wait_for(running, 5)
        assert checker.calls == 2  # the check that was running, then exactly one more
        assert not d.recheck and not d.checking
    finally:
        d.scheduler.shutdown(wait=False)


def test_slot_trigger_fires_once_per_slot_without_drift() -> None:
    name, interval = "ghcr.io/deephaven/server", 10.0
    trigger = daemon.SlotTrigger(name, interval, jitter=4.0)
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    fire = trigger.get_next_fire_time(None, now)
    slots = []
    for _ in range(500):  # IntervalTrigger's jitter would have drifted by ~1,000 s by now
        start = claims.slot_start(name, interval, fire)
        assert (fire - start).total_seconds() <= 4.0  # early in its slot
        slots.append(start)
        fire = trigger.get_next_fire_time(fire, fire)
    steps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
    assert steps == {interval}  # every slot once: none skipped, none twice
    # a check brought forward by a notification, mid-slot: the next fire is the next slot's
    mid = slots[-1] + dt.timedelta(seconds=7)
    after = trigger.get_next_fire_time(mid, mid)
    assert claims.slot_start(name, interval, after) == slots[-1] + dt.timedelta(seconds=interval)


def test_slot_trigger_without_jitter_moves_on_from_a_boundary() -> None:
    # jitter 0 puts every fire exactly on a slot boundary: the next must be one interval later
    trigger = daemon.SlotTrigger("a/b", 1.0, jitter=0.0)
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    fire = trigger.get_next_fire_time(None, now)
    for _ in range(100):
        nxt = trigger.get_next_fire_time(fire, fire)
        assert nxt - fire == dt.timedelta(seconds=1)
        fire = nxt
