"""Daemon scheduling rules that need no servers: a notification during a check is never lost."""

from __future__ import annotations

import asyncio
import datetime as dt
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
        assert watch.name in d.recheck
        checker.release.set()
        await asyncio.wait_for(running, 5)
        assert checker.calls == 2  # the check that was running, then exactly one more
        assert not d.recheck and not d.checking
    finally:
        d.scheduler.shutdown(wait=False)
