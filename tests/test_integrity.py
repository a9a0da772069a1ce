"""Integrity (issue 12, item 4): a release that still answers its recorded digest but lost a child
manifest or blob is found by HEADs spread over ``integrity.interval``, becomes ``broken`` with an
alert, and is repaired under the watch's policy (real registry, SQLite and PostgreSQL)."""

from __future__ import annotations

import collections
import datetime as dt
import json
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from tests import test_restore_vault, test_vaulting
from tests.support import images, storage
from tests.support import registry as support_registry
from tests.test_deletions import make_checker
from tests.test_restore import delete_blob, fetch
from watchdog import config, daemon, detect, integrity, models, service
from watchdog.alerts import render
from watchdog.registry import media
from watchdog.store import claims
from watchdog.store import repo as store_repo

K = models.EventKind
S = models.TagState
D1 = "sha256:" + "1" * 64
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(days=1)


def _record(state: S, tag: str = "1.0.0", repository: str = "r.example/a") -> models.TagRecord:
    return models.TagRecord(repository, tag, D1, D1, None, state, T0, T0, T0)


@pytest.mark.parametrize(
    ("state", "children", "blobs", "kind", "new_state"),
    [
        (S.OK, [], [], None, None),
        (S.OK, ["sha256:c"], [], K.BROKEN, S.BROKEN),
        (S.OK, [], ["sha256:b"], K.BROKEN, S.BROKEN),
        (S.BROKEN, ["sha256:c"], [], None, None),  # still broken: nothing new
        (S.BROKEN, [], [], K.REVERTED, S.OK),  # someone pushed the parts back
        (S.DRIFTED, ["sha256:c"], [], None, None),  # the check's rules apply to those
        (S.DELETED, ["sha256:c"], [], None, None),
    ],
)
def test_integrity_transitions(
    state: S, children: list[str], blobs: list[str], kind: K | None, new_state: S | None
) -> None:
    change = detect.integrity(_record(state), children, blobs, T1)
    assert (change.event.kind if change.event else None) is kind
    assert (change.record.state if change.record else None) is new_state
    if kind is K.BROKEN:
        assert change.event is not None
        detail = change.event.detail
        assert detail["missing_children"] == children and detail["missing_blobs"] == blobs
        assert detail["repairable"] is (not blobs)


def test_every_release_is_due_exactly_once_per_interval_spread_evenly() -> None:
    interval = 86400.0
    records = [_record(S.OK, tag=f"1.0.{i}") for i in range(1000)]
    records.append(_record(S.DRIFTED, tag="drifted"))  # not a whole release to check
    tick = integrity.tick_seconds(interval)
    assert tick == 900.0
    start = 1_700_000_123.0
    counts: collections.Counter[str] = collections.Counter()
    per_tick = []
    for i in range(96):
        due = integrity.due(records, interval, start + i * tick, start + (i + 1) * tick)
        per_tick.append(len(due))
        counts.update(r.tag for r in due)
    assert set(counts.values()) == {1} and len(counts) == 1000
    assert max(per_tick) < 30  # ~10 a tick: spread, not bunched
    assert len(integrity.due(records, interval, start, start + interval)) == 1000


def make_sweeper(checker: service.Checker, interval: float = 86400.0) -> integrity.Sweeper:
    settings = checker.settings.model_copy(
        update={"integrity": config.IntegritySettings(interval=interval)}
    )
    return integrity.Sweeper(
        settings,
        checker.store,
        checker.clients.get,
        checker.restorer,
        clock=checker.clock,
        metrics_=checker.metrics,
    )


def text_of(event: models.Event) -> str:
    message = render.render_event(event, render.Context())
    return message.text + "\n" + json.dumps(message.blocks)


async def test_a_lost_child_manifest_makes_the_release_broken_and_it_is_repaired(
    alerting: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    store = alerting
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo)  # on_move: restore
    await checker.check_watch(watch)  # records and archives the index and its children
    sweeper = make_sweeper(checker)
    assert await sweeper.check_watch(watch) == []  # whole: nothing
    arm = next(c for k, c in release.children.items() if k.startswith("linux/arm64"))
    pusher.delete_manifest(repo, arm.digest)  # what --delete-untagged does to a tagged index
    assert fetch(registry, repo, arm.digest).status_code == 404
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
    # the regular check sees nothing: the tag answers its recorded digest
    assert (await checker.check_watch(watch)).events == []

    events = await sweeper.check_watch(watch)
    assert [e.kind for e in events] == [K.BROKEN, K.RESTORED]
    broken, restored = events
    assert broken.detail["missing_children"] == [arm.digest]
    assert broken.detail["missing_blobs"] == [] and broken.detail["repairable"] is True
    assert broken.detail["policy"] == "on_move: restore" and broken.detail["restoring"] is True
    assert restored.detail["children_reput"] == [arm.digest]
    assert fetch(registry, repo, arm.digest).content == arm.body  # pullable whole again
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK
    assert [e.kind for e in store.history(watch.name, "0.15.0")][-2:] == [K.BROKEN, K.RESTORED]
    queued = {r["event_id"] for r in store.outbox.outbox_rows()}
    assert {broken.id, restored.id} <= queued  # both alerted
    shown = text_of(broken)
    assert "cannot be pulled whole" in shown and arm.digest in shown
    assert "repairing it (`on_move: restore`)" in shown
    assert await sweeper.check_watch(watch) == []  # whole again


async def test_a_lost_blob_is_broken_and_cannot_be_repaired_without_the_vault(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    store = store_repo.Store(store.engine, channels=("slack",), grouping=models.Grouping())
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    amd = release.children["linux/amd64"]
    layer = media.blobs(amd.body)[1]
    delete_blob(registry, repo, layer)
    sweeper = make_sweeper(checker)
    (broken,) = await sweeper.check_watch(watch)  # on_move: alert: alerted only
    assert broken.kind is K.BROKEN and broken.detail["missing_blobs"] == [layer]
    assert broken.opens_incident  # counted where the sweep's results come back
    opened = checker.metrics.registry.get_sample_value(
        "tag_watchdog_incidents_total", {"registry": watch.repository.host}
    )
    assert opened == 1
    assert broken.detail["repairable"] is False and "restoring" not in broken.detail
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.BROKEN
    shown = text_of(broken)
    assert "alerted only (`on_move: alert`): the release stays broken" in shown
    assert "only a copy kept elsewhere (the vault) can" in shown
    assert "Put it back by hand" not in shown  # no command would help
    assert await sweeper.check_watch(watch) == []  # still broken: no second alert

    # a watch that repairs tries, and fails with the reason; nothing is changed
    checker2, watch2 = make_checker(store, registry, repo, on_move="restore")
    sweeper2 = make_sweeper(checker2)
    (failed,) = await sweeper2.check_watch(watch2)  # the unrepaired `broken` is taken up
    assert failed.kind is K.RESTORE_FAILED and f"blob {layer}" in failed.detail["reason"]
    assert await sweeper2.check_watch(watch2) == []  # not tried again every interval

    # the blob pushed back (a person, or the vault): whole again, `reverted`
    pusher.blob(repo, images.layer_bytes("release-linux-amd64-None"))
    (reverted,) = await sweeper.check_watch(watch)
    assert reverted.kind is K.REVERTED and reverted.detail["after"] == "broken"
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK


async def test_the_sweep_checks_each_release_once_per_interval(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(6):
        pusher.image(repo, f"1.0.{i}", seed=f"r{i}")
    checker, watch = make_checker(store, registry, repo)
    await checker.check_watch(watch)
    now = [dt.datetime(2026, 11, 2, tzinfo=dt.UTC)]
    sweeper = make_sweeper(checker, interval=96.0)  # ticks of 1 s
    sweeper.clock = lambda: now[0]
    seen: list[str] = []
    real = integrity.inspect

    async def counting(registry_: Any, store_: Any, record: models.TagRecord, *a: Any) -> Any:
        seen.append(record.tag)
        return await real(registry_, store_, record, *a)

    monkeypatch.setattr(integrity, "inspect", counting)
    for _ in range(96):
        now[0] += dt.timedelta(seconds=1)
        assert await sweeper.tick() == []
    assert sorted(seen) == [f"1.0.{i}" for i in range(6)]


async def test_distributions_delete_untagged_gc_breaks_a_tagged_index_and_the_sweep_says_so(
    store: store_repo.Store, own_registry: support_registry.RegistryServer
) -> None:
    """The issue's report, with the real tool: ``garbage-collect --delete-untagged`` (registry
    stopped) removes the platform manifests of a still-tagged index, and their blobs; the tag
    answers as before. The sweep finds it ``broken``; the repair fails, naming what only a copy
    kept elsewhere (the vault) can bring back, and changes nothing."""
    repo = "t/gc"
    with images.Pusher(own_registry.url, auth_for=own_registry.push_auth) as pusher:
        release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, own_registry, repo)  # on_move: restore
    await checker.check_watch(watch)
    storage.garbage_collect(own_registry, delete_untagged=True)
    assert fetch(own_registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
    assert all(
        fetch(own_registry, repo, c.digest).status_code == 404 for c in release.children.values()
    )
    assert (await checker.check_watch(watch)).events == []  # the tag's HEAD sees nothing

    broken, failed = await make_sweeper(checker).check_watch(watch)
    assert broken.kind is K.BROKEN and failed.kind is K.RESTORE_FAILED
    assert sorted(broken.detail["missing_children"]) == sorted(
        c.digest for c in release.children.values()
    )
    lost = {b for c in release.children.values() for b in media.blobs(c.body)}
    assert set(broken.detail["missing_blobs"]) == lost and broken.detail["repairable"] is False
    assert "blob" in failed.detail["reason"] and "gone" in failed.detail["reason"]
    assert fetch(own_registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.BROKEN
    assert "only a copy kept elsewhere (the vault) can" in text_of(broken)


async def test_the_daemon_schedules_the_sweep_which_holds_each_watch(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    arm = next(c for k, c in release.children.items() if k.startswith("linux/arm64"))
    pusher.delete_manifest(repo, arm.digest)
    for enabled in (False, True):
        settings = checker.settings.model_copy(
            update={"integrity": config.IntegritySettings(enabled=enabled, interval=96.0)}
        )
        d = daemon.Daemon(settings)
        d.store, d.checker, d.claims = store, checker, claims.Claims(store.engine)
        d.scheduler = AsyncIOScheduler(timezone=dt.UTC)
        d.scheduler.start(paused=True)
        try:
            d._schedule_integrity()
            job = d.scheduler.get_job("integrity")
            if not enabled:
                assert job is None
                continue
            assert job is not None and job.trigger.interval == dt.timedelta(seconds=1)
            (sweeper,) = job.args
            sweeper.last = 0.0  # long ago: everything is due
            held: list[str] = []

            def holding(repository: str, held: list[str] = held, real: Any = d.holding) -> Any:
                held.append(repository)
                return real(repository)

            d.holding = holding  # type: ignore[method-assign]
            await d._integrity(sweeper)
            assert held == [watch.name]
        finally:
            d.scheduler.shutdown(wait=False)
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.BROKEN


make_rig = test_vaulting.make_rig  # the fixture: a store, clients, a checker and a vault copier


async def test_a_lost_blob_of_a_vaulted_release_is_repaired_from_the_vault(
    own_registry: support_registry.RegistryServer, repo: str, make_pusher: Any, make_rig: Any
) -> None:
    """The vault keeps the release whole: a blob the source lost makes it broken but
    repairable, and a watch that repairs copies the blob back; every platform pullable again."""
    pusher = make_pusher(own_registry)
    release = pusher.index(repo, "0.15.0", seed="release")
    rig = make_rig(own_registry, own_registry, repo)  # the vault on the same registry
    await rig.check()
    assert await rig.copier.drain(30) == 0
    layer = media.blobs(release.children["linux/amd64"].body)[1]
    delete_blob(own_registry, repo, layer)
    watch = rig.settings.watches[0].model_copy(update={"on_move": "restore"})
    sweeper = make_sweeper(rig.checker)
    broken, restored = await sweeper.check_watch(watch)
    assert broken.kind is K.BROKEN and broken.detail["missing_blobs"] == [layer]
    assert broken.detail["repairable"] is True and broken.detail["in_vault"] is True
    shown = text_of(broken)
    assert "The vault keeps a complete copy of this release" in shown
    assert "missing blobs copied back from the vault" in shown
    assert restored.kind is K.RESTORED, restored.detail
    rc = rig.clients.get(own_registry.host)
    await test_restore_vault.assert_pullable(rc, repo, "0.15.0", release)
    record = rig.store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK
    assert await sweeper.check_watch(watch) == []  # whole
