"""Putting a release back (DESIGN section 5) against the real registry, on SQLite and PostgreSQL.

The release story: a multi-arch ``0.15.0`` is overwritten by another build; with
``on_move: restore`` one check puts the exact bytes back. Then the hard cases: a child manifest
gone from the registry (re-PUT from the archive), a blob gone (``restore_failed``, nothing
changed), a restore war (loop protection), and the store's part (apply_changes, count_events).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from watchdog import config, errors, metrics, models, restore, service
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import repo as store_repo

K = models.EventKind
S = models.TagState


class Clock:
    """An injected clock: every call is one second later."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def make_checker(
    store: store_repo.Store,
    server: support_registry.RegistryServer,
    repository: str,
    *,
    on_move: str = "restore",
    max_per_tag: int = 3,
) -> tuple[service.Checker, config.WatchSettings]:
    ref = models.ImageRef.parse(f"{server.host}/{repository}")
    watch = config.WatchSettings(repository=ref, on_move=on_move)
    settings = config.Settings(
        registries=(server.settings(),),
        watches=(watch,),
        restore=config.RestoreSettings(max_per_tag=max_per_tag, window=3600.0),
    )
    clients = service.Clients(
        settings,
        sleep=_no_sleep,
        retry=dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=2, base=0.0),
    )
    return service.Checker(settings, store, clients, metrics.Metrics(), clock=Clock()), watch


def fetch(
    server: support_registry.RegistryServer, repository: str, reference: str
) -> httpx.Response:
    return httpx.get(
        f"{server.url}/v2/{repository}/manifests/{reference}", headers={"Accept": media.ACCEPT}
    )


def delete_blob(server: support_registry.RegistryServer, repository: str, digest: str) -> None:
    resp = httpx.delete(f"{server.url}/v2/{repository}/blobs/{digest}")
    assert resp.status_code == 202, resp.text


def publish(pusher: images.Pusher, repository: str, kind: str, seed: str) -> Any:
    if kind == "oci-index":
        return pusher.index(repository, "0.15.0", seed=seed)
    if kind == "docker-list":
        return pusher.index(repository, "0.15.0", seed=seed, docker=True)
    return pusher.image(repository, "0.15.0", seed=seed)


def body_of(pushed: Any) -> bytes:
    return pushed.index.body if isinstance(pushed, images.PushedIndex) else pushed.body


@pytest.mark.parametrize("kind", ["oci-index", "docker-list", "single"])
async def test_the_release_story_an_overwritten_release_is_put_back(
    store, registry, repo, pusher, kind
):
    release = publish(pusher, repo, kind, "release")
    checker, watch = make_checker(store, registry, repo)
    first = await checker.check_watch(watch)
    assert [e.kind for e in first.events] == [K.FIRST_SEEN]

    # the accidental re-release from the old branch
    rebuilt = publish(pusher, repo, kind, "old-branch")
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == rebuilt.digest

    result = await checker.check_watch(watch)
    assert result.ok, result
    assert [e.kind for e in result.events] == [K.MOVED, K.RESTORED]
    restored = result.events[1]
    assert (restored.old_digest, restored.new_digest) == (rebuilt.digest, release.digest)
    assert restored.actor == "watchdog" and restored.id is not None
    assert result.drifted == []

    served = fetch(registry, repo, "0.15.0")
    assert served.headers["docker-content-digest"] == release.digest
    assert served.content == body_of(release)  # byte-identical, never re-serialised
    if isinstance(release, images.PushedIndex):
        for child in release.children.values():
            assert fetch(registry, repo, child.digest).content == child.body
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK
    assert record.recorded_digest == record.current_digest == release.digest
    samples = checker.metrics.registry.get_sample_value(
        "tag_watchdog_restores_total", {"repository": watch.name, "result": "restored"}
    )
    assert samples == 1.0
    # the next check is quiet
    quiet = await checker.check_watch(watch)
    assert quiet.ok and quiet.events == [] and quiet.drifted == []


async def test_a_child_and_the_index_gone_from_the_registry_come_back_from_the_archive(
    store, registry, repo, pusher
):
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo)
    await checker.check_watch(watch)  # archives the index and both children
    pusher.index(repo, "0.15.0", seed="rebuild")
    arm = next(c for k, c in release.children.items() if k.startswith("linux/arm64"))
    pusher.delete_manifest(repo, arm.digest)
    pusher.delete_manifest(repo, release.digest)
    assert fetch(registry, repo, arm.digest).status_code == 404

    result = await checker.check_watch(watch)
    assert [e.kind for e in result.events] == [K.MOVED, K.RESTORED]
    detail = result.events[1].detail
    assert detail["source"] == "archive" and detail["children_reput"] == [arm.digest]
    assert fetch(registry, repo, "0.15.0").content == release.index.body
    assert fetch(registry, repo, arm.digest).content == arm.body


async def test_a_blob_gone_for_good_fails_with_the_reason_and_changes_nothing(
    store, registry, repo, pusher
):
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo)
    await checker.check_watch(watch)
    rebuilt = pusher.index(repo, "0.15.0", seed="rebuild")
    amd = release.children["linux/amd64"]
    layer = media.blobs(amd.body)[1]
    delete_blob(registry, repo, layer)

    result = await checker.check_watch(watch)
    assert [e.kind for e in result.events] == [K.MOVED, K.RESTORE_FAILED]
    reason = result.events[1].detail["reason"]
    assert f"blob {layer}" in reason and "gone" in reason
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == rebuilt.digest
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.DRIFTED
    assert record.recorded_digest == release.digest
    assert [t.tag for t in result.drifted] == ["0.15.0"]
    failed = checker.metrics.registry.get_sample_value(
        "tag_watchdog_restores_total", {"repository": watch.name, "result": "failed"}
    )
    assert failed == 1.0


async def test_a_restore_war_stops_auto_restore_after_max_per_tag(store, registry, repo, pusher):
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, max_per_tag=2)
    await checker.check_watch(watch)
    kinds: list[list[K]] = []
    pushed = []
    for round_ in range(4):
        # something re-pushes every time
        pushed.append(pusher.image(repo, "0.15.0", seed=f"war-{round_}").digest)
        result = await checker.check_watch(watch)
        kinds.append([e.kind for e in result.events])
    assert kinds == [
        [K.MOVED, K.RESTORED],
        [K.MOVED, K.RESTORED],
        [K.MOVED, K.RESTORE_STOPPED],  # one loud event...
        [K.MOVED],  # ...not one per push
    ]
    # that last move stays unrestored: it is judged again at each check, as it was when it moved
    assert (await checker.check_watch(watch)).events == []
    history = store.history(watch.name, "0.15.0")
    (stopped,) = [e for e in history if e.kind is K.RESTORE_STOPPED]
    assert stopped.detail["reason"] == "something keeps pushing this tag"
    assert stopped.detail["loud"] is True
    # the two digests a person chooses between (Restore puts back the old, Accept records the new)
    assert (stopped.old_digest, stopped.new_digest) == (release.digest, pushed[2])
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] != release.digest
    # a person can still restore
    async with registry_client.RegistryClient(registry.settings()) as rc:
        outcome = await restore.Restorer(store, rc, clock=Clock(), actor="cli:test").run(
            models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
        )
    assert outcome.restored, outcome.reason
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest


class Killed(BaseException):
    """The daemon dying (SIGKILL) at that point: nothing after it runs, nothing catches it."""


@pytest.mark.parametrize("dies", ["before the PUT", "after the PUT"])
async def test_a_restore_cut_short_by_a_crash_is_finished_by_the_next_check(
    store, registry, repo, pusher, monkeypatch, dies
):
    """``moved`` is committed before the restore runs; a crash in between used to leave the tag
    drifted for good (nothing restores a move already recorded) and, after the PUT, made the
    next check record the watchdog's own restore as a ``reverted`` by someone else. Found by
    tests/system/test_crash.py."""
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo)
    await checker.check_watch(watch)
    rebuilt = pusher.index(repo, "0.15.0", seed="rebuild")
    execute = restore.Restorer._execute

    async def crash(self: restore.Restorer, plan: restore.Plan) -> restore.Outcome:
        if dies == "after the PUT":
            assert plan.manifest is not None
            await self.registry.put_manifest(
                plan.path, plan.tag, plan.manifest.body, plan.manifest.media_type
            )
        raise Killed

    monkeypatch.setattr(restore.Restorer, "_execute", crash)
    with pytest.raises(Killed):
        await checker.check_watch(watch)
    (moved,) = [e for e in store.history(watch.name, "0.15.0") if e.kind is K.MOVED]
    assert moved.detail["restoring"] is True  # the promise the alert made
    in_registry = fetch(registry, repo, "0.15.0").headers["docker-content-digest"]
    assert in_registry == (release.digest if dies == "after the PUT" else rebuilt.digest)

    monkeypatch.setattr(restore.Restorer, "_execute", execute)  # the restarted daemon
    result = await checker.check_watch(watch)
    assert [e.kind for e in result.events] == [K.RESTORED]
    history = store.history(watch.name, "0.15.0")
    assert [(e.kind, e.new_digest) for e in history] == [
        (K.FIRST_SEEN, release.digest),
        (K.MOVED, rebuilt.digest),
        (K.RESTORED, release.digest),
    ]
    assert history[-1].old_digest == rebuilt.digest
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK
    assert record.current_digest == record.recorded_digest == release.digest
    # done once: the next check has nothing to do
    assert (await checker.check_watch(watch)).events == []


async def test_an_alert_watch_never_restores_by_itself_after_a_restart(
    store, registry, repo, pusher
):
    """Only a move that promised a restore (``on_move: restore``) is finished after a crash: a
    drifted tag of an ``alert`` watch waits for a person, also when the watch is switched to
    ``restore`` later (that takes a new move, or ``tag-watchdog restore``)."""
    pusher.index(repo, "0.15.0", seed="release")
    alerting, watch = make_checker(store, registry, repo, on_move="alert")
    await alerting.check_watch(watch)
    rebuilt = pusher.index(repo, "0.15.0", seed="rebuild")
    assert [e.kind for e in (await alerting.check_watch(watch)).events] == [K.MOVED]
    restoring, watch = make_checker(store, registry, repo, on_move="restore")
    assert (await restoring.check_watch(watch)).events == []
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == rebuilt.digest


async def test_plan_changes_nothing_and_refuses_digests_never_recorded(
    store, registry, repo, pusher
):
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    rebuilt = pusher.index(repo, "0.15.0", seed="rebuild")
    await checker.check_watch(watch)
    ref = models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
    before = store.history(watch.name, "0.15.0")
    async with registry_client.RegistryClient(registry.settings()) as rc:
        restorer = restore.Restorer(store, rc, clock=Clock(), actor="cli:test")
        plan = await restorer.plan(ref)
        assert plan.ok and plan.digest == release.digest and plan.source == "registry"
        assert len(plan.children_present) == 2 and len(plan.blobs_checked) == 4
        assert any("would PUT" in line for line in plan.describe())
        with pytest.raises(errors.UsageError, match="never recorded"):
            await restorer.plan(ref, rebuilt.digest)
        with pytest.raises(errors.UsageError, match="never recorded"):
            await restorer.plan(ref.with_tag("9.9.9"))
    assert store.history(watch.name, "0.15.0") == before
    assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == rebuilt.digest


def test_apply_changes_and_count_events(store: store_repo.Store) -> None:
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    digest = models.sha256_digest(b"x")
    record = models.TagRecord("r.example/a", "1.0.0", digest, digest, None, S.OK, now, now, now)
    first = models.Event("r.example/a", "1.0.0", K.FIRST_SEEN, now, new_digest=digest)
    store.apply_changes("r.example/a", now, [models.Change("r.example/a", "1.0.0", record, first)])
    for minutes in (1, 2, 30):
        at = now + dt.timedelta(minutes=minutes)
        event = models.Event("r.example/a", "1.0.0", K.RESTORED, at, new_digest=digest)
        (saved,) = store.apply_changes(
            "r.example/a", at, [models.Change("r.example/a", "1.0.0", None, event)]
        )
        assert saved.id is not None
    since = now + dt.timedelta(minutes=2)
    assert store.count_events("r.example/a", "1.0.0", [K.RESTORED], since) == 2
    assert store.count_events("r.example/a", "1.0.0", [K.RESTORED, K.FIRST_SEEN], now) == 4
    assert store.count_events("r.example/a", "2.0.0", [K.RESTORED], now) == 0
    with pytest.raises(ValueError):
        store.apply_changes(
            "r.example/b", now, [models.Change("r.example/a", "1.0.0", None, first)]
        )


async def test_a_deleted_release_is_put_back_by_a_manual_restore(store, registry, repo, pusher):
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    pusher.delete_manifest(repo, release.digest)  # the tag and the index are gone
    await checker.check_watch(watch)
    await checker.check_watch(watch)  # the second definitive answer confirms
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.DELETED
    async with registry_client.RegistryClient(registry.settings()) as rc:
        outcome = await restore.Restorer(store, rc, clock=Clock(), actor="cli:test").run(
            models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
        )
    assert outcome.restored, outcome.reason
    assert outcome.event.detail["source"] == "archive"
    assert fetch(registry, repo, "0.15.0").content == release.index.body
    quiet = await checker.check_watch(watch)
    assert quiet.ok and quiet.events == [] and quiet.drifted == []


async def test_a_tag_that_does_not_answer_the_digest_after_the_put_is_restore_failed(
    store, registry, repo, pusher, make_fault_proxy
):
    release = pusher.image(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    pusher.image(repo, "0.15.0", seed="rebuild")
    await checker.check_watch(watch)
    proxy = make_fault_proxy(registry)
    liar = "sha256:" + "e" * 64
    proxy.rewrite_header("HEAD", f"/v2/{repo}/manifests/0.15.0", "Docker-Content-Digest", liar)
    async with registry_client.RegistryClient(registry.settings(host=proxy.host)) as rc:
        outcome = await restore.Restorer(store, rc, clock=Clock(), actor="cli:test").run(
            models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
        )
    assert not outcome.restored
    assert outcome.reason == f"after the PUT the tag answers {liar}, not {release.digest}"
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.DRIFTED


async def test_a_plan_says_what_it_found_problems_first_and_what_would_happen(
    store, registry, repo, pusher
):
    """`restore --dry-run`'s text (issue 15, item 6): blobs counted per state, never "4 present"
    above "blob ... is gone"; the verdict right under the reference, then the problems."""
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    pusher.index(repo, "0.15.0", seed="rebuild")
    await checker.check_watch(watch)
    ref = models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
    lost = media.blobs(release.children["linux/amd64"].body)[1]
    async with registry_client.RegistryClient(registry.settings()) as rc:
        restorer = restore.Restorer(store, rc, clock=Clock(), actor="cli:test")
        ok = await restorer.plan(ref)
        delete_blob(registry, repo, lost)
        broken = await restorer.plan(ref)
    lines = ok.describe()
    assert lines[1] == f"  would PUT {ok.manifest_size} bytes to {ref.name}:0.15.0, then HEAD it"
    assert "  blobs: 4 checked, 4 present, 0 missing" in lines
    assert not ok.nothing_to_do and ok.reason is None

    lines = broken.describe()
    assert not broken.ok and broken.blob_counts() == {"present": 3, "in_vault": 0, "missing": 1}
    assert lines[1] == (
        f"  cannot restore: blob {lost} (of {release.children['linux/amd64'].digest}) is gone "
        "from the registry; nothing was changed"
    )
    assert not any(line.startswith("  PROBLEM") for line in lines)  # the verdict said it
    assert "  blobs: 4 checked, 3 present, 1 missing" in lines
    assert not any("would PUT" in line for line in lines)

    # two gone: the verdict counts them, each one listed right under it
    other = media.blobs(release.children["linux/arm64/v8"].body)[1]
    delete_blob(registry, repo, other)
    async with registry_client.RegistryClient(registry.settings()) as rc:
        worse = await restore.Restorer(store, rc, clock=Clock(), actor="cli:test").plan(ref)
    lines = worse.describe()
    assert lines[1] == "  cannot restore: 2 blobs are gone from the registry; nothing was changed"
    assert [line.split(" (of")[0] for line in lines[2:4]] == [
        f"  PROBLEM: blob {lost}",
        f"  PROBLEM: blob {other}",
    ]
    assert "  blobs: 4 checked, 2 present, 2 missing" in lines


async def test_a_plan_for_a_tag_at_its_record_has_nothing_to_do(store, registry, repo, pusher):
    release = pusher.image(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    ref = models.ImageRef.parse(f"{registry.host}/{repo}:0.15.0")
    async with registry_client.RegistryClient(registry.settings()) as rc:
        plan = await restore.Restorer(store, rc, clock=Clock(), actor="cli:test").plan(ref)
    assert plan.ok and plan.nothing_to_do
    assert plan.describe()[1] == (
        f"  nothing to do: the tag already answers the recorded digest {release.digest}"
    )
