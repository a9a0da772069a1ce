"""The watch loop end to end: a real registry, a real store (SQLite and PostgreSQL), no mocks.

Record -> unchanged -> moved (both digests, changed platforms) -> deleted (confirmed on the second
check) -> reappeared; and injected 401/403/429/5xx/plain-404 never produce a change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from watchdog import config, metrics, models, notifications, service
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import repo

K = models.EventKind
S = models.TagState
OCI_INDEX = media.OCI_INDEX


class Clock:
    """An injected clock: every call is one second later (the tests never sleep on it)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def make_checker(
    store: repo.Store, registry_settings: config.RegistrySettings, **watch: Any
) -> tuple[service.Checker, config.WatchSettings]:
    ref = models.ImageRef.parse(f"{registry_settings.host}/{watch.pop('repository')}")
    w = config.WatchSettings(repository=ref, **watch)
    settings = config.Settings(registries=(registry_settings,), watches=(w,))
    clients = service.Clients(
        settings,
        sleep=_no_sleep,
        retry=dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=2, base=0.0),
    )
    return service.Checker(settings, store, clients, metrics.Metrics(), clock=Clock()), w


def index_from(
    pusher: images.Pusher, repository: str, tag: str, children: dict[str, images.Pushed]
) -> images.Pushed:
    """Push an OCI index over the given (already pushed) platform children."""
    entries = []
    for key, child in children.items():
        os_, arch, *variant = key.split("/")
        platform = {"os": os_, "architecture": arch}
        if variant:
            platform["variant"] = variant[0]
        entries.append(child.descriptor(platform=platform))
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return pusher.manifest(repository, tag, body, OCI_INDEX)


def kinds(result: service.CheckResult) -> list[tuple[str, K]]:
    return sorted((e.tag, e.kind) for e in result.events)


async def test_record_move_delete_reappear(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    single = pusher.image(repo, "1.0.0", seed="single", docker=True)
    pusher.image(repo, "latest", seed="nightly")
    pusher.tag(repo, "sha256-" + "a" * 64, single)  # a referrer fallback tag: never watched
    pusher.image(repo, "main", seed="branch")
    checker, watch = make_checker(store, registry.settings(), repository=repo)
    name = watch.name

    # 1. first sight: a silent baseline of the release tags only, by their index digest
    first = await checker.check_watch(watch)
    assert first.ok, first
    assert kinds(first) == [("0.15.0", K.FIRST_SEEN), ("1.0.0", K.FIRST_SEEN)]
    record = store.get_tag(name, "0.15.0")
    assert record is not None
    assert record.recorded_digest == release.digest  # the index, never a platform child
    assert record.media_type == OCI_INDEX
    assert record.state is S.OK
    # the exact bytes of the index and of every child are archived
    archived = store.get_manifest(name, release.digest)
    assert archived is not None and archived.body == release.index.body
    for child in release.children.values():
        kept = store.get_manifest(name, child.digest)
        assert kept is not None and kept.body == child.body
    assert store.get_tag(name, "latest") is None
    assert store.get_tag(name, "main") is None

    # 2. unchanged: no event, nothing but the batched last-checked update
    second = await checker.check_watch(watch)
    assert second.ok and second.events == [] and second.drifted == []
    again = store.get_tag(name, "0.15.0")
    assert again is not None and again.last_checked > record.last_checked
    assert again.last_changed == record.last_changed

    # 3. the accidental re-release: arm64 rebuilt, amd64 the same
    arm64 = pusher.image(repo, None, seed="rebuild", os="linux", architecture="arm64", variant="v8")
    children = dict(release.children)
    (arm_key,) = [k for k in children if k.startswith("linux/arm64")]
    children[arm_key] = arm64
    moved_to = index_from(pusher, repo, "0.15.0", children)
    third = await checker.check_watch(watch)
    assert kinds(third) == [("0.15.0", K.MOVED)]
    (event,) = third.events
    assert (event.old_digest, event.new_digest) == (release.digest, moved_to.digest)
    assert event.detail["changed_platforms"] == [arm_key]
    assert event.detail["recorded_digest"] == release.digest
    assert [t.tag for t in third.drifted] == ["0.15.0"]
    drifted = store.get_tag(name, "0.15.0")
    assert drifted is not None and drifted.state is S.DRIFTED
    assert drifted.recorded_digest == release.digest  # still the trusted one
    assert drifted.current_digest == moved_to.digest
    new_archived = store.get_manifest(name, moved_to.digest)
    assert new_archived is not None and new_archived.body == moved_to.body

    # 4. never alert twice for the same move
    fourth = await checker.check_watch(watch)
    assert fourth.events == [] and [t.tag for t in fourth.drifted] == ["0.15.0"]

    # 5. deleted: the first definitive answer only counts, the second confirms
    pusher.delete_manifest(repo, moved_to.digest)
    fifth = await checker.check_watch(watch)
    assert fifth.ok and fifth.events == []
    pending = store.get_tag(name, "0.15.0")
    assert pending is not None and pending.missing_count == 1 and pending.state is S.DRIFTED
    sixth = await checker.check_watch(watch)
    assert kinds(sixth) == [("0.15.0", K.DELETED)]
    assert sixth.events[0].old_digest == moved_to.digest
    gone = store.get_tag(name, "0.15.0")
    assert gone is not None and gone.state is S.DELETED and gone.current_digest is None
    seventh = await checker.check_watch(watch)
    assert seventh.events == []

    # 6. put back by hand at the recorded digest: reappeared, state ok again
    pusher.tag(repo, "0.15.0", release.index)
    eighth = await checker.check_watch(watch)
    assert kinds(eighth) == [("0.15.0", K.REAPPEARED)]
    assert eighth.events[0].detail["matches_record"] is True
    back = store.get_tag(name, "0.15.0")
    assert back is not None and back.state is S.OK and back.current_digest == release.digest

    history = [e.kind for e in store.history(name, "0.15.0")]
    assert history == [K.FIRST_SEEN, K.MOVED, K.DELETED, K.REAPPEARED]
    assert [e.kind for e in store.history(name, "1.0.0")] == [K.FIRST_SEEN]


async def test_docker_manifest_list_and_reverted(
    store: repo.Store, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    original = pusher.index(repo, "2.0.0", seed="one", docker=True)
    checker, watch = make_checker(store, registry.settings(), repository=repo)
    await checker.check_watch(watch)
    record = store.get_tag(watch.name, "2.0.0")
    assert record is not None and record.recorded_digest == original.digest
    assert record.media_type == media.DOCKER_MANIFEST_LIST
    other = pusher.index(repo, "2.0.0", seed="two", docker=True)
    moved = await checker.check_watch(watch)
    assert kinds(moved) == [("2.0.0", K.MOVED)]
    assert sorted(moved.events[0].detail["changed_platforms"]) == sorted(other.children)
    # someone runs `crane tag repo@<recorded> 2.0.0`
    pusher.tag(repo, "2.0.0", original.index)
    reverted = await checker.check_watch(watch)
    assert kinds(reverted) == [("2.0.0", K.REVERTED)]
    assert reverted.drifted == []


@pytest.mark.parametrize(
    ("method", "path", "status", "headers"),
    [
        ("HEAD", "/manifests/", 401, {"WWW-Authenticate": 'Basic realm="x"'}),
        ("HEAD", "/manifests/", 403, {}),
        ("HEAD", "/manifests/", 429, {"Retry-After": "0"}),
        ("HEAD", "/manifests/", 500, {}),
        ("HEAD", "/manifests/", 503, {}),
        ("GET", "/tags/list", 401, {"WWW-Authenticate": 'Basic realm="x"'}),
        ("GET", "/tags/list", 429, {"Retry-After": "0"}),
        ("GET", "/tags/list", 502, {}),
        (None, "/manifests/", 404, {"Content-Type": "text/plain"}),  # a router's 404, no JSON
    ],
)
async def test_faults_are_never_changes(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
    method: str | None,
    path: str,
    status: int,
    headers: dict[str, str],
) -> None:
    release = pusher.index(repo, "0.15.0", seed="r")
    pusher.image(repo, "0.16.0", seed="s")
    proxy = make_fault_proxy(registry)
    checker, watch = make_checker(store, registry.settings(host=proxy.host), repository=repo)
    baseline = await checker.check_watch(watch)
    assert baseline.ok and len(baseline.events) == 2
    before = {t.tag: t for t in store.all_tags(watch.name)}

    # the tag even moves meanwhile: while the registry misbehaves, nothing may be concluded
    pusher.index(repo, "0.15.0", seed="moved")
    pusher.delete_manifest(repo, store.get_tag(watch.name, "0.16.0").current_digest)  # type: ignore[union-attr]
    proxy.fail(method, path, status, headers=headers, body=b"not json")
    for _ in range(3):  # more than the two confirmations a deletion needs
        result = await checker.check_watch(watch)
        assert result.events == [], result.events
        assert not result.ok
    after = {t.tag: t for t in store.all_tags(watch.name)}
    for tag, rec in before.items():
        assert dataclasses.replace(after[tag], last_checked=rec.last_checked) == rec
    assert checker.metrics.tag_moves.labels(repository=watch.name)._value.get() == 0
    errors_counted = checker.metrics.checks.labels(registry=proxy.host, result="error")._value.get()
    assert errors_counted == 3
    status_row = {w.repository: w for w in store.watch_status()}[watch.name]
    assert status_row.consecutive_errors >= 3 and status_row.last_error

    # after recovery the record is exact: the move is seen, the deletion confirmed in two checks
    proxy.reset()
    recovered = await checker.check_watch(watch)
    assert ("0.15.0", K.MOVED) in kinds(recovered)
    assert ("0.16.0", K.DELETED) not in kinds(recovered)
    confirmed = await checker.check_watch(watch)
    assert kinds(confirmed) == [("0.16.0", K.DELETED)]
    assert store.get_tag(watch.name, "0.15.0").recorded_digest == release.digest  # type: ignore[union-attr]


async def test_registry_down_changes_nothing(store: repo.Store, tmp_path: Any) -> None:
    server = support_registry.RegistryServer(tmp_path / "reg", "open").start()
    try:
        with images.Pusher(server.url) as pusher:
            pusher.index("team/app", "1.0.0", seed="a")
        checker, watch = make_checker(store, server.settings(), repository="team/app")
        assert (await checker.check_watch(watch)).ok
        before = store.all_tags()
        server.stop()
        for _ in range(3):
            result = await checker.check_watch(watch)
            assert result.error is not None and result.events == []
        assert [
            dataclasses.replace(t, last_checked=b.last_checked)
            for t, b in zip(store.all_tags(), before, strict=True)
        ] == before
    finally:
        server.close()


async def test_unchanged_check_costs_the_same_sql_for_any_number_of_tags(
    store: repo.Store, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    image = pusher.image(repo, "1.0.0", seed="x")
    checker, watch = make_checker(store, registry.settings(), repository=repo)

    async def statements_of_unchanged_check() -> int:
        await checker.check_watch(watch)  # records new tags, if any
        count = 0

        def count_it(*args: Any) -> None:
            nonlocal count
            count += 1

        sa.event.listen(store.engine, "before_cursor_execute", count_it)
        try:
            result = await checker.check_watch(watch)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", count_it)
        assert result.ok and result.events == []
        return count

    few = await statements_of_unchanged_check()
    for i in range(2, 60):
        pusher.tag(repo, f"1.0.{i}", image)
    many = await statements_of_unchanged_check()
    assert few == many
    assert len(store.all_tags(watch.name)) == 59


async def test_invalid_tags_in_tags_list_are_skipped_with_one_warning_each(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tags/list naming tags no registry can hold (a '+', a final newline, non-ASCII digits)
    never blinds the repository: its valid tags are recorded, each invalid one warned about
    once, whatever the number of checks."""
    image = pusher.image(repo, "1.0.0", seed="fine")
    proxy = make_fault_proxy(registry)
    junk = ["1.2.3+build.5", "1.2.3\n", "\u0663.\u0662.\u0661", "1.2.4\n\n"]

    def add_junk(answer: faultproxy.Answer, request: faultproxy.Seen) -> faultproxy.Answer:
        doc = json.loads(answer.body)
        answer.body = json.dumps({"name": doc["name"], "tags": [*doc["tags"], *junk]}).encode()
        return answer

    proxy.add("GET", r"/tags/list", transform=add_junk)
    checker, watch = make_checker(store, registry.settings(host=proxy.host), repository=repo)
    caplog.set_level("WARNING", logger="watchdog.service")
    for _ in range(3):
        result = await checker.check_watch(watch)
        assert result.ok, result
    assert [t.tag for t in store.all_tags(watch.name)] == ["1.0.0"]
    assert store.get_tag(watch.name, "1.0.0").recorded_digest == image.digest  # type: ignore[union-attr]
    skipped = [r.getMessage() for r in caplog.records if "tag_invalid_skipped" in r.getMessage()]
    assert len(skipped) == len(junk), skipped
    for tag in junk:
        assert sum(f"tag={tag!a} " in line for line in skipped) == 1, (tag, skipped)
    # no request ever named an invalid tag
    assert proxy.count("HEAD", "/manifests/1.0.0") == 3
    assert proxy.count(None, r"/manifests/(?!1\.0\.0|sha256:)") == 0


def test_invalid_tags_are_named_once_then_only_counted(
    store: repo.Store, caplog: pytest.LogCaptureFixture
) -> None:
    """However many invalid tags a registry lists, check after check, a repository's warnings
    stop at MAX_INVALID_TAGS_REMEMBERED named ones plus one line with the count."""
    settings = config.Settings(watches=(config.WatchSettings(repository="localhost:1/team/app"),))
    checker = service.Checker(settings, store, service.Clients(settings), metrics.Metrics())
    caplog.set_level("WARNING", logger="watchdog.service")
    limit = service.MAX_INVALID_TAGS_REMEMBERED
    for cycle in range(3):
        listed = ["1.0.0", *(f"1.0.{i}+x" for i in range(limit + 50 + cycle))]
        assert checker._valid_tags("localhost:1/team/app", listed) == ["1.0.0"]
    lines = [r.getMessage() for r in caplog.records]
    assert len([x for x in lines if "tag=" in x]) == limit
    assert len([x for x in lines if "count=" in x]) == 1


def _drifted_info(m: metrics.Metrics) -> set[tuple[str, str]]:
    return {
        (s.labels["tag"], s.labels["state"])
        for f in m.registry.collect()
        if f.name == "tag_watchdog_drifted_tag_info"
        for s in f.samples
        if s.value == 1
    }


async def test_a_replica_that_did_not_check_sets_its_gauges_from_the_record(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """Two replicas: A saw the move, B the revert (A skipped that slot). A's gauges follow the
    record, or its drifted series would keep ReleaseTagMoved firing after the tag is back."""
    pusher.image(repo, "1.0.0", seed="release")
    a, watch = make_checker(store, registry.settings(), repository=repo)
    b, _ = make_checker(store, registry.settings(), repository=repo)
    await a.check_watch(watch)
    pusher.image(repo, "1.0.0", seed="overwrite")
    await a.check_watch(watch)
    assert _drifted_info(a.metrics) == {("1.0.0", "drifted")}
    pusher.image(repo, "1.0.0", seed="release")  # put back by hand: the same bytes
    await b.check_watch(watch)
    assert _drifted_info(b.metrics) == set()
    assert _drifted_info(a.metrics) == {("1.0.0", "drifted")}  # stale until...
    await a.gauges_from_record(watch)  # ...A's slot went to B: A reads the record
    assert _drifted_info(a.metrics) == set()
    name = watch.name
    assert (
        a.metrics.registry.get_sample_value("tag_watchdog_tags_drifted", {"repository": name}) == 0
    )


async def test_a_replica_names_the_pusher_whose_notification_reached_another_replica(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """Replica A checks and finds the move; the registry's notification went to replica B,
    which noted the pusher in the store: A names it all the same."""
    pusher.image(repo, "1.0.0", seed="release")
    a, watch = make_checker(store, registry.settings(), repository=repo)
    a.pushers = notifications.PushLedger()  # A's own memory heard nothing
    await a.check_watch(watch)
    unseen = pusher.image(repo, "1.0.0", seed="overwrite")
    (moved,) = (await a.check_watch(watch)).events
    assert "pushed_by" not in moved.detail  # nobody noted anything: unknown
    again = pusher.image(repo, "1.0.0", seed="overwrite-2")
    ci = notifications.Pusher("registry", "ci-bot", "10.0.0.5")
    told = [  # what B received: the push of this digest, and one of another digest
        notifications.RegistryEvent("push", repo, "1.0.0", registry.host, ci, again.digest),
        notifications.RegistryEvent(
            "push",
            repo,
            "1.0.0",
            registry.host,
            notifications.Pusher("registry", "other"),
            unseen.digest,
        ),
    ]
    store.pushes.note(told, a.clock())
    (moved,) = (await a.check_watch(watch)).events
    assert moved.new_digest == again.digest
    assert moved.detail["pushed_by"] == {
        "source": "registry",
        "actor": "ci-bot",
        "address": "10.0.0.5",
    }
