"""A slow registry costs its own watches only (issue 14, item 6): a check has a deadline
(``check_timeout``), and the global check slots are shared fairly between registries
(``service.FairSlots``), so a registry dripping its answers a byte at a time never holds back
another registry's checks. Against a dripping server of our own (tests/support/slow.py) and the
real registry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import images, ports, slow
from tests.support import registry as support_registry
from watchdog import config, daemon, errors, metrics, models, service
from watchdog.config import settings as config_settings
from watchdog.store import repo


@pytest.fixture
def dripping() -> Iterator[slow.DrippingServer]:
    with slow.DrippingServer(interval=0.2) as server:
        yield server


def _slow_settings(server: slow.DrippingServer) -> config.RegistrySettings:
    # 2 s per read: each byte comes in time, so only a wall-clock deadline ends an exchange
    # (the transport's own is 3 x timeout, then retried: about 20 s per request)
    return config.RegistrySettings(
        host=server.host, insecure=True, timeout=2.0, use_docker_config=False
    )


async def test_a_check_of_a_dripping_registry_ends_at_its_deadline(
    store: repo.Store, dripping: slow.DrippingServer
) -> None:
    watch = config.WatchSettings(
        repository=models.ImageRef.parse(f"{dripping.host}/team/app"), check_timeout=1.0
    )
    settings = config.Settings(registries=(_slow_settings(dripping),), watches=(watch,))
    clients = service.Clients(settings)
    try:
        checker = service.Checker(settings, store, clients, metrics.Metrics())
        result = await checker.check_watch(watch)
    finally:
        await clients.aclose()
    assert result.error is not None and "1s check deadline (check_timeout)" in result.error
    assert result.seconds < 10  # the deadline, not the transport's 6 s x 3 attempts
    status = {w.repository: w for w in store.watch_status()}[watch.name]
    assert status.consecutive_errors == 1 and "check deadline" in (status.last_error or "")
    assert checker.metrics.checks.labels(registry=dripping.host, result="error")._value.get() == 1


def test_check_timeout_defaults_and_per_watch_override() -> None:
    settings = config.from_mapping(
        {"watches": ["r.example/a", {"repository": "r.example/b", "check_timeout": "30s"}]}, {}
    )
    a, b = settings.watches
    assert settings.check_timeout == config_settings.DEFAULT_CHECK_TIMEOUT == 300.0
    assert settings.check_deadline(a) == 300.0 and settings.check_deadline(b) == 30.0
    shorter = config.from_mapping({"check_timeout": "2m", "watches": ["r.example/a"]}, {})
    assert shorter.check_deadline(shorter.watches[0]) == 120.0
    with pytest.raises(errors.ConfigError, match="check_timeout"):
        config.from_mapping({"check_timeout": "0s", "watches": ["r.example/a"]}, {})


# --- FairSlots, alone -------------------------------------------------------------------------


class _Holders:
    """Tasks that each take a slot for one registry and keep it until released."""

    def __init__(self, slots: service.FairSlots) -> None:
        self.slots = slots
        self.tasks: list[asyncio.Task[None]] = []
        self.release = asyncio.Event()
        self.got: list[str] = []

    def start(self, registry: str, n: int = 1) -> None:
        async def hold() -> None:
            async with self.slots.hold(registry):
                self.got.append(registry)
                await self.release.wait()

        self.tasks += [asyncio.create_task(hold()) for _ in range(n)]

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def finish(self) -> None:
        self.release.set()
        await asyncio.gather(*self.tasks)


async def test_one_registry_alone_may_use_every_slot() -> None:
    h = _Holders(service.FairSlots(8, {"a"}))
    h.start("a", 10)
    await h.settle()
    assert h.got.count("a") == 8
    await h.finish()
    assert h.got.count("a") == 10 and not h.slots.held


async def test_with_two_registries_a_slot_stays_free_for_the_other() -> None:
    h = _Holders(service.FairSlots(8, {"slow", "fast"}))
    h.start("slow", 9)
    await h.settle()
    assert h.slots.held["slow"] == 7  # all but one: the reserve
    h.start("fast", 3)
    await h.settle()
    assert h.slots.held["fast"] == 1  # at once, although slow's checks all hang
    await h.finish()
    assert not h.slots.held


async def test_over_its_share_a_registry_takes_no_freed_slot_while_another_waits() -> None:
    slots = service.FairSlots(4, {"slow", "fast"})
    release_one = asyncio.Event()
    got: list[str] = []

    async def take(registry: str, gate: asyncio.Event) -> None:
        async with slots.hold(registry):
            got.append(registry)
            await gate.wait()

    forever = asyncio.Event()
    slow_tasks = [asyncio.create_task(take("slow", forever)) for _ in range(3)]
    first_fast = asyncio.create_task(take("fast", release_one))
    for _ in range(20):
        await asyncio.sleep(0)
    assert slots.held == {"slow": 3, "fast": 1}
    more_slow = asyncio.create_task(take("slow", forever))
    more_fast = [asyncio.create_task(take("fast", forever)) for _ in range(2)]
    for _ in range(20):
        await asyncio.sleep(0)
    release_one.set()  # a slot frees: slow (3, over its share of 2) and fast (0 now) both wait
    for _ in range(20):
        await asyncio.sleep(0)
    assert slots.held == {"slow": 3, "fast": 1}
    assert slots.share("slow") == 2
    for t in [*slow_tasks, more_slow, *more_fast]:
        t.cancel()
    await asyncio.gather(*slow_tasks, more_slow, *more_fast, first_fast, return_exceptions=True)
    assert not slots.held


# --- the daemon: nine dripping watches and a healthy one ---------------------------------------


@contextlib.asynccontextmanager
async def _running(d: daemon.Daemon) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(d.run())
    try:
        yield task
    finally:
        d.stopping.set()
        await asyncio.wait_for(task, 15)


async def _until(what: Any, within: float) -> float:
    """Seconds until ``what()`` is true; fails past ``within``."""
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_a_healthy_registrys_move_is_seen_while_a_dripping_one_hangs(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    dripping: slow.DrippingServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # on stop, the hanging checks are cancelled at once instead of waited for
    monkeypatch.setattr(daemon, "SHUTDOWN_GRACE", 0.5)
    first = pusher.image(repo, "1.0.0", seed="first")
    slow_watches = [
        config.WatchSettings(repository=models.ImageRef.parse(f"{dripping.host}/slow/app{i}"))
        for i in range(9)
    ]
    healthy = config.WatchSettings(repository=models.ImageRef.parse(f"{registry.host}/{repo}"))
    settings = config.Settings(
        database_url=config.Secret(f"sqlite:///{tmp_path / 'w.db'}"),
        interval=1.0,
        jitter=0.0,
        # far longer than the bound below: the fair share, not the deadline, lets healthy through
        check_timeout=60.0,
        http=config.HttpSettings(listen=f"127.0.0.1:{ports.free_port()}"),
        registries=(_slow_settings(dripping), registry.settings()),
        watches=(*slow_watches, healthy),  # healthy last: the slow ones ask for slots first
    )
    d = daemon.Daemon(settings)
    async with _running(d):
        await _until(lambda: d.store is not None, 10)
        assert d.store is not None
        store = d.store

        def answers(digest: str) -> bool:
            record = store.get_tag(healthy.name, "1.0.0")
            return record is not None and record.current_digest == digest

        await _until(lambda: answers(first.digest), 5)
        moved = pusher.image(repo, "1.0.0", seed="moved")
        await _until(lambda: answers(moved.digest), 5)
        record = store.get_tag(healthy.name, "1.0.0")
        assert record is not None and record.state is models.TagState.DRIFTED
        # ... while every slow watch is still in its first check, its requests dripping
        assert dripping.requests >= 7
        assert not any(w.name in d.last_cycle for w in slow_watches)
        assert d.slots.held[dripping.host] == 7
