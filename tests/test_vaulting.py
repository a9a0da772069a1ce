"""The vault copier, in process, against real registries and a real (SQLite) store: a check's
first sight queues the copy in its own transaction, the copier keeps it (mounted on one registry,
streamed across two), says why when it cannot, and tries a temporary failure again later."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import registry as support_registry
from watchdog import config, metrics, models, service, vaulting
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import db
from watchdog.store import repo as store_repo

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


@dataclasses.dataclass
class Endpoint:
    """A registry address that is not a RegistryServer of ours (a fault proxy in front of one)."""

    host: str

    def settings(self) -> config.RegistrySettings:
        return config.RegistrySettings(
            host=self.host, insecure=True, timeout=5.0, use_docker_config=False
        )


@dataclasses.dataclass
class Rig:
    settings: config.Settings
    store: store_repo.Store
    clients: service.Clients
    checker: service.Checker
    copier: vaulting.Copier
    metrics: metrics.Metrics
    clock: Clock
    source: models.ImageRef

    async def check(self) -> service.CheckResult:
        return await self.checker.check_watch(self.settings.watches[0])

    def copies(self) -> list[Any]:
        return list(self.store.vault.copies().values())


@pytest.fixture
async def make_rig(tmp_path: Path):
    made: list[Rig] = []

    def make(
        src: support_registry.RegistryServer | Endpoint,
        vault: support_registry.RegistryServer | Endpoint,
        repository: str,
        database_url: str | None = None,  # a test's db_url (both backends); else a SQLite file
        **vault_settings: Any,
    ) -> Rig:
        hosts = {src.host: src.settings(), vault.host: vault.settings()}
        source = models.ImageRef.parse(f"{src.host}/{repository}")
        settings = config.Settings(
            registries=tuple(hosts.values()),
            watches=(config.WatchSettings(repository=source),),
            vault=config.VaultSettings(
                repository=models.ImageRef.parse(f"{vault.host}/vault"), **vault_settings
            ),
        )
        engine = db.create_engine(database_url or f"sqlite:///{tmp_path / f'rig{len(made)}.db'}")
        db.upgrade(engine)
        store = store_repo.Store(engine, channels=("slack",), vaulted=settings.vaulted())
        retry = dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=1, base=0.0)
        clients = service.Clients(settings, sleep=_no_sleep, retry=retry)
        clock = Clock()
        m = metrics.Metrics()
        checker = service.Checker(settings, store, clients, m, clock=clock)
        copier = vaulting.Copier(
            settings, store.vault, clients.get, observer=m, notices=store.outbox, clock=clock
        )
        rig = Rig(settings, store, clients, checker, copier, m, clock, source)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.clients.aclose()
        rig.store.engine.dispose()


def sample(m: metrics.Metrics, name: str, **labels: str) -> float:
    value = m.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_first_sight_queues_a_copy_and_the_copier_keeps_it_by_mount(
    registry, repo, pusher, make_rig
):
    pushed = pusher.index(repo, "0.15.0", seed="vault-mount")
    rig = make_rig(registry, registry, repo)
    result = await rig.check()
    assert [e.kind for e in result.events] == [models.EventKind.FIRST_SEEN]
    (queued,) = rig.copies()
    assert (queued.tag, queued.digest, queued.state) == ("0.15.0", pushed.digest, "pending")
    assert await rig.copier.run_once() == 1
    (kept,) = rig.copies()
    vault_repo = f"vault/{registry.host.replace(':', '-')}/{repo}"
    vault_tag = "0.15.0--" + pushed.digest.removeprefix("sha256:")
    assert (kept.state, kept.vault_repository, kept.vault_tag) == (
        "kept",
        f"{registry.host}/{vault_repo}",
        vault_tag,
    )
    rc = rig.clients.get(registry.host)
    assert (await rc.head_manifest(vault_repo, vault_tag)).digest == pushed.digest
    for child in pushed.children.values():
        for blob in media.blobs(child.body):
            assert await rc.head_blob(vault_repo, blob)
    assert sample(rig.metrics, "tag_watchdog_vault_copies_total", result="kept") == 1
    assert sample(rig.metrics, "tag_watchdog_vault_pending") == 0
    # nothing more to do, and a second check queues nothing new
    await rig.check()
    assert await rig.copier.run_once() == 0


async def test_a_vault_on_another_registry_gets_the_bytes_streamed(
    registry, repo, pusher, server, make_rig
):
    pushed = pusher.index(repo, "1.0.0", seed="vault-stream")
    rig = make_rig(registry, server, repo)
    await rig.check()
    assert await rig.copier.drain(30) == 0
    (kept,) = rig.copies()
    assert kept.state == "kept"
    vault_rc = rig.clients.get(server.host)
    assert kept.vault_repository is not None and kept.vault_tag is not None
    path = kept.vault_repository.removeprefix(f"{server.host}/")
    got = await vault_rc.get_manifest(path, kept.vault_tag)
    assert got.body == pushed.index.body
    for child in pushed.children.values():
        for blob in media.blobs(child.body):
            await vault_rc.get_blob(path, blob)  # verified


async def test_no_push_rights_on_the_vault_is_failed_with_the_reason_and_alerted(
    token_registry, token_issuer, repo, make_pusher, make_rig
):
    make_pusher(token_registry).image(repo, "2.0.0", seed="vault-denied")
    rig = make_rig(token_registry, token_registry, repo)
    await rig.check()
    token_issuer.grant = lambda user, type_, name, actions: ["pull"]
    assert await rig.copier.run_once() == 1
    (failed,) = rig.copies()
    assert failed.state == "failed"
    assert failed.reason is not None and "no push rights" in failed.reason
    assert sample(rig.metrics, "tag_watchdog_vault_copies_total", result="failed") == 1
    notices = [r for r in rig.store.outbox.outbox_rows() if r["notice"]]
    assert [n["notice"]["kind"] for n in notices] == ["vault_copy_failed"]
    assert "could not be vaulted" in notices[0]["notice"]["text"]


async def test_a_vault_that_is_down_is_tried_again_later_then_kept(
    registry, repo, pusher, own_registry, make_rig
):
    pushed = pusher.image(repo, "3.0.0", seed="vault-down")
    rig = make_rig(registry, own_registry, repo)
    await rig.check()
    own_registry.stop()
    try:
        assert await rig.copier.run_once() == 1
        (waiting,) = rig.copies()
        assert (waiting.state, waiting.attempts) == ("pending", 1)
        assert sample(rig.metrics, "tag_watchdog_vault_copies_total", result="retry") == 1
        assert await rig.copier.run_once() == 0  # not due yet: backoff
    finally:
        own_registry.start()
    rig.clock.now += dt.timedelta(minutes=5)
    assert await rig.copier.run_once() == 1
    (kept,) = rig.copies()
    assert kept.state == "kept"
    assert kept.vault_tag is not None and kept.vault_repository is not None
    rc = rig.clients.get(own_registry.host)
    path = kept.vault_repository.removeprefix(f"{own_registry.host}/")
    assert (await rc.head_manifest(path, kept.vault_tag)).digest == pushed.digest


async def test_a_watch_with_vault_false_is_not_copied(registry, repo, pusher, tmp_path):
    pusher.image(repo, "4.0.0", seed="vault-off")
    source = models.ImageRef.parse(f"{registry.host}/{repo}")
    settings = config.Settings(
        registries=(registry.settings(),),
        watches=(config.WatchSettings(repository=source, vault=False),),
        vault=config.VaultSettings(repository=models.ImageRef.parse(f"{registry.host}/vault")),
    )
    assert settings.vaulted() == frozenset()
    engine = db.create_engine(f"sqlite:///{tmp_path / 'off.db'}")
    db.upgrade(engine)
    store = store_repo.Store(engine, vaulted=settings.vaulted())
    clients = service.Clients(settings)
    try:
        checker = service.Checker(settings, store, clients, metrics.Metrics())
        await checker.check_watch(settings.watches[0])
        assert store.all_tags() and store.vault.copies() == {}
    finally:
        await clients.aclose()
        engine.dispose()


async def test_copies_run_at_most_max_concurrency_at_once_per_registry(
    registry, repo, pusher, server, make_fault_proxy, make_rig, monkeypatch
):
    for i in range(3):
        pusher.image(repo, f"5.0.{i}", seed=f"vault-bound-{i}")
    proxy = make_fault_proxy(server)
    proxy.add(None, r"/v2/vault/", delay=0.05)  # copies take long enough to overlap
    # a spy around the real copy: how many run at once (the proxy's own in-flight count races
    # with keep-alive connections handing over between requests)
    active = peak = 0
    real = vaulting.registry_copy.copy_release

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return await real(*args, **kwargs)
        finally:
            active -= 1

    monkeypatch.setattr(vaulting.registry_copy, "copy_release", counted)
    one = make_rig(registry, Endpoint(proxy.host), repo, max_concurrency=1)
    await one.check()
    assert await one.copier.drain(60) == 0
    assert peak == 1
    peak = 0
    many = make_rig(registry, Endpoint(proxy.host), repo, max_concurrency=3)
    await many.check()
    assert await many.copier.drain(60) == 0
    assert peak == 3  # the bound above is the setting, not an accident


async def test_scan_waits_for_its_copies_a_bounded_time_and_leaves_the_rest_pending(
    registry, repo, pusher, server, make_fault_proxy, make_rig
):
    pusher.image(repo, "6.0.0", seed="vault-slow")
    proxy = make_fault_proxy(server)
    stuck = threading.Event()
    proxy.add("POST", r"/blobs/uploads/", action=lambda handler: stuck.wait(30))
    vault = Endpoint(proxy.host)
    rig = make_rig(registry, vault, repo)
    await rig.check()
    try:
        started = time.monotonic()
        assert await rig.copier.drain(0.5) == 1
        assert time.monotonic() - started < 5
    finally:
        stuck.set()
    (left,) = rig.copies()
    assert (left.state, left.attempts, left.vault_tag) == ("pending", 0, None)


async def test_a_bug_in_a_copy_is_logged_and_the_copier_goes_on(
    registry, repo, pusher, make_rig, caplog
):
    pusher.image(repo, "7.0.0", seed="vault-bug")
    rig = make_rig(registry, registry, repo)
    await rig.check()

    def broken(host: str) -> Any:
        raise RuntimeError("a bug")

    rig.copier.client_for = broken
    stop = asyncio.Event()
    task = asyncio.create_task(rig.copier.run(stop))
    for _ in range(100):
        if "vault_copier_crashed" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert not task.done()  # still running
    stop.set()
    await asyncio.wait_for(task, 10)
    assert "vault_copier_crashed" in caplog.text
    (left,) = rig.copies()
    assert left.state == "pending"  # nothing recorded: the next round tries again
