"""The actions layer: plan / restore / accept under the hold the caller hands in, against the real
registry and on SQLite and PostgreSQL; the rules of accept and of a restore asked from an alert;
the claim a process without checks of its own (the CLI) holds."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.test_restore import Clock, fetch, make_checker
from watchdog import actions, config, errors, models, service
from watchdog.store import claims, db
from watchdog.store import repo as store_repo

K = models.EventKind
S = models.TagState
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
AT = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
REF = models.ImageRef.parse("ghcr.io/deephaven/server:0.15.0")


@dataclasses.dataclass
class Hold:
    """A hold that records, for each time it was held, the repository and the kinds of the tag's
    events when it was taken and when it was let go."""

    store: store_repo.Store
    tag: str
    held: list[tuple[str, list[str], list[str]]] = dataclasses.field(default_factory=list)

    def kinds(self, repository: str) -> list[str]:
        return [e.kind.value for e in self.store.history(repository, self.tag)]

    @contextlib.asynccontextmanager
    async def __call__(self, repository: str) -> AsyncIterator[None]:
        before = self.kinds(repository)
        try:
            yield
        finally:
            self.held.append((repository, before, self.kinds(repository)))


async def drifted(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> tuple[service.Checker, config.WatchSettings, models.ImageRef, Any, Any]:
    """``0.15.0`` released, recorded, rebuilt and seen drifted (on_move: alert): the checker,
    the watch, the tag's reference, the release and the rebuild."""
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    release = pusher.image(repo, "0.15.0", seed="release")
    await checker.check_watch(watch)
    rebuilt = pusher.image(repo, "0.15.0", seed="rebuilt")
    await checker.check_watch(watch)
    return checker, watch, models.ImageRef.parse(f"{watch.name}:0.15.0"), release, rebuilt


async def test_restore_and_accept_write_under_the_hold_and_a_plan_holds_nothing(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    checker, watch, ref, release, _ = await drifted(store, registry, repo, pusher)
    hold = Hold(store, "0.15.0")
    restores: list[tuple[str, str]] = []
    written: list[None] = []
    acts = actions.Actions(
        store,
        hold,
        clock=Clock(),
        registries=checker.clients.get,
        on_restore=lambda repository, result: restores.append((repository, result)),
        on_written=lambda: written.append(None),
    )
    try:
        plan = await acts.plan(ref, None, "cli:test")
        assert plan.ok and plan.digest == release.digest
        assert hold.held == [] and written == []  # a plan holds nothing and writes nothing

        outcome = await acts.restore(ref, None, "api")
        assert outcome.restored and outcome.event.actor == "api"
        assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
        assert hold.held == [
            (watch.name, ["first_seen", "moved"], ["first_seen", "moved", "restored"])
        ]
        assert restores == [(watch.name, "restored")] and len(written) == 1

        second = pusher.image(repo, "0.15.0", seed="deliberate")
        await checker.check_watch(watch)
        event = await acts.accept(ref, "hotfix", "slack:U1", second.digest)
        assert (event.kind, event.new_digest, event.actor) == (
            K.ACCEPTED,
            second.digest,
            "slack:U1",
        )
        assert event.detail == {"reason": "hotfix"}
        assert hold.held[-1][1][-1] == "moved" and hold.held[-1][2][-1] == "accepted"
        assert restores == [(watch.name, "restored")] and len(written) == 2  # no restore counted
        record = store.get_tag(watch.name, "0.15.0")
        assert record is not None and (record.recorded_digest, record.state) == (
            second.digest,
            S.OK,
        )
    finally:
        await checker.clients.aclose()


async def test_a_restore_asked_from_an_alert_is_refused_under_the_hold_once_the_record_changed(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    checker, _, ref, release, rebuilt = await drifted(store, registry, repo, pusher)
    hold = Hold(store, "0.15.0")
    acts = actions.Actions(store, hold, clock=Clock(), registries=checker.clients.get)
    try:
        # someone accepted the rebuild while the tap (showing the release's digest) waited
        await acts.accept(ref, None, "cli:someone")
        with pytest.raises(errors.UsageError, match="changed since"):
            await acts.restore(ref, release.digest, "slack:U1", still_recorded=True)
        assert hold.held[-1][1] == hold.held[-1][2]  # judged under the hold; nothing written
        assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == rebuilt.digest
        # and the tap on Accept of that same move finds it done
        with pytest.raises(actions.AlreadyDone):
            await acts.accept(ref, None, "slack:U2", rebuilt.digest)
    finally:
        await checker.clients.aclose()


def test_a_restore_from_an_alert_is_judged_again_under_the_lock() -> None:
    """What the tap saw must still hold when the restore runs (an accept may have got there
    first while the tap waited for the repository's lock)."""

    def record(recorded: str, current: str, state: models.TagState) -> models.TagRecord:
        return models.TagRecord(REF.name, "0.15.0", recorded, current, None, state, AT, AT, AT)

    drifted = record(OLD, NEW, S.DRIFTED)
    assert actions.check_still_wanted(drifted, REF, OLD) is None  # go ahead
    with pytest.raises(errors.UsageError, match="changed since") as caught:
        actions.check_still_wanted(record(NEW, NEW, S.OK), REF, OLD)  # accepted
    assert not isinstance(caught.value, actions.AlreadyDone)
    with pytest.raises(actions.AlreadyDone):
        actions.check_still_wanted(record(OLD, OLD, S.OK), REF, OLD)  # restored
    with pytest.raises(errors.UsageError, match="never recorded"):
        actions.check_still_wanted(None, REF, OLD)


@pytest.mark.parametrize(
    ("recorded", "current", "state", "expected", "refusal", "done"),
    [
        (None, None, None, None, "never recorded", False),
        (OLD, None, S.DELETED, None, "is deleted", False),
        (OLD, OLD, S.OK, None, "already answers its recorded digest", True),
        (OLD, OLD, S.OK, OLD, "already answers its recorded digest", True),
        # the person saw NEW, but the tag went back to its record meanwhile: not "done"
        (OLD, OLD, S.OK, NEW, "already answers its recorded digest", False),
        (OLD, NEW, S.DRIFTED, "sha256:" + "c" * 64, "not sha256:ccc", False),
    ],
)
def test_what_accept_refuses(
    store: store_repo.Store,
    recorded: str | None,
    current: str | None,
    state: models.TagState | None,
    expected: str | None,
    refusal: str,
    done: bool,
) -> None:
    if recorded is not None:
        assert state is not None
        record = models.TagRecord(REF.name, "0.15.0", recorded, current, None, state, AT, AT, AT)
        store.apply_changes(REF.name, AT, [models.Change(REF.name, "0.15.0", record)])
    with pytest.raises(errors.UsageError, match=refusal) as caught:
        actions.accept(store, REF, now=AT, actor="cli:test", expected=expected)
    assert isinstance(caught.value, actions.AlreadyDone) == done
    assert store.history(REF.name, "0.15.0") == []  # nothing written


def test_accept_makes_the_current_digest_the_record(store: store_repo.Store) -> None:
    record = models.TagRecord(REF.name, "0.15.0", OLD, NEW, None, S.DRIFTED, AT, AT, AT)
    store.apply_changes(REF.name, AT, [models.Change(REF.name, "0.15.0", record)])
    later = AT + dt.timedelta(minutes=5)
    event = actions.accept(store, REF, now=later, actor="cli:test", reason="re-release")
    assert (event.kind, event.old_digest, event.new_digest) == (K.ACCEPTED, OLD, NEW)
    assert event.id is not None and event.detail == {"reason": "re-release"}
    saved = store.get_tag(REF.name, "0.15.0")
    assert saved is not None
    assert (saved.recorded_digest, saved.current_digest, saved.state) == (NEW, NEW, S.OK)
    assert saved.last_changed == later


@pytest.mark.postgres
async def test_the_claim_waits_for_a_check_under_way_then_gives_up(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    try:
        db.upgrade(engine)
        shared = claims.Claims(engine)
        checking = shared.acquire("ghcr.io/a/b", dt.datetime.now(dt.UTC), slot=None)
        assert checking is not None  # a replica's check of the repository
        started = time.monotonic()
        with pytest.raises(errors.StoreError, match="being checked by another process"):
            async with actions.claimed(shared, "ghcr.io/a/b", wait=0.6):
                raise AssertionError("held while a check holds the claim")
        assert 0.6 <= time.monotonic() - started < 5
        async with actions.claimed(shared, "ghcr.io/a/c", wait=0.6):
            pass  # another repository is free

        hold = actions.claims_hold(shared, wait=10)
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, checking.release)  # the check ends
        async with hold("ghcr.io/a/b"):
            assert shared.acquire("ghcr.io/a/b", dt.datetime.now(dt.UTC), slot=None) is None
        again = shared.acquire("ghcr.io/a/b", dt.datetime.now(dt.UTC), slot=None)
        assert again is not None  # let go when the action ended
        again.release()
    finally:
        engine.dispose()


def test_the_cli_is_recorded_as_its_os_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    assert actions.cli_actor() == "cli:alice"

    def unknown() -> str:
        raise OSError("no user")

    monkeypatch.setattr("getpass.getuser", unknown)
    assert actions.cli_actor() == "cli"


async def test_several_tags_are_all_judged_first_then_each_restored_under_its_own_hold(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """`restore A B C` (issue 15, item 2): one tag that cannot be restored refuses them all
    before anything changes; then each tag is restored under its own hold, on condition that
    its record is still what was planned (a restore or accept elsewhere meanwhile wins)."""
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    releases = {t: pusher.image(repo, t, seed=f"release-{t}") for t in ("1.0.0", "2.0.0")}
    await checker.check_watch(watch)
    rebuilds = {t: pusher.image(repo, t, seed=f"rebuild-{t}") for t in releases}
    await checker.check_watch(watch)
    a, b = (models.ImageRef.parse(f"{watch.name}:{t}") for t in releases)
    hold = Hold(store, "2.0.0")
    acts = actions.Actions(store, hold, clock=Clock(), registries=checker.clients.get)

    def answers(tag: str) -> str:
        return fetch(registry, repo, tag).headers["docker-content-digest"]

    try:
        with pytest.raises(errors.UsageError) as refused:
            await actions.plan_all(acts, [a, a.with_tag("9.9.9"), b], None, "cli:test")
        assert str(refused.value).startswith(
            "1 of 3 references cannot be restored; nothing was changed:\n"
        )
        assert f"{watch.name}:9.9.9 was never recorded" in str(refused.value)
        assert hold.held == [] and answers("1.0.0") == rebuilds["1.0.0"].digest

        planned = await actions.plan_all(acts, [a, b], None, "cli:test")
        assert [p.outcome for p in planned] == ["planned", "planned"]
        await acts.accept(b, "deliberate", "cli:someone-else")  # while the plans were shown
        done = [await actions.restore_planned(acts, p, None, "cli:test") for p in planned]
        assert [r.outcome for r in done] == ["restored", "refused"]
        assert done[0].event is not None and done[0].event.new_digest == releases["1.0.0"].digest
        assert done[1].event is None and "changed since" in (done[1].reason or "")
        assert answers("1.0.0") == releases["1.0.0"].digest
        assert answers("2.0.0") == rebuilds["2.0.0"].digest
        assert len(hold.held) == 3  # a's restore, the accept, b's refusal: one hold each
        assert hold.held[-1][1] == hold.held[-1][2]  # b: nothing written under its hold

        # at its record: nothing to do, nothing PUT, nothing written
        before = store.history(watch.name, "1.0.0")
        (again,) = await actions.plan_all(acts, [a], None, "cli:test")
        assert again.outcome == "nothing_to_do"
        assert (await actions.restore_planned(acts, again, None, "cli:test")) is again
        # restored by someone else between the plan and the restore: nothing to do either
        pusher.image(repo, "1.0.0", seed="rebuild-again")
        await checker.check_watch(watch)
        (planned_a,) = await actions.plan_all(acts, [a], None, "cli:test")
        await acts.restore(a, None, "cli:quicker")
        later = await actions.restore_planned(acts, planned_a, None, "cli:test")
        assert later.outcome == "nothing_to_do" and later.event is None
        kinds = [e.kind.value for e in store.history(watch.name, "1.0.0")[len(before) :]]
        assert kinds == ["moved", "restored"]  # the quicker one's only
    finally:
        await checker.clients.aclose()


def test_several_accepts_are_all_judged_first_and_drifted_tags_are_listed(
    store: store_repo.Store,
) -> None:
    other = REF.with_tag("0.16.0")
    deleted = REF.with_tag("0.14.0")
    elsewhere = models.ImageRef.parse("ghcr.io/acme/other:1.0.0")
    rows = [
        (REF, OLD, NEW, S.DRIFTED),
        (other, OLD, OLD, S.OK),
        (deleted, OLD, None, S.DELETED),
        (elsewhere, OLD, NEW, S.DRIFTED),
    ]
    for ref, recorded, current, state in rows:
        assert ref.tag is not None
        record = models.TagRecord(ref.name, ref.tag, recorded, current, None, state, AT, AT, AT)
        store.apply_changes(ref.name, AT, [models.Change(ref.name, ref.tag, record)])

    async def hold(repository: str) -> AsyncIterator[None]:
        yield

    acts = actions.Actions(store, contextlib.asynccontextmanager(hold), clock=lambda: AT)
    with pytest.raises(errors.UsageError) as refused:
        asyncio.run(actions.accept_all(acts, [REF, other, deleted], None, "cli:test"))
    message = str(refused.value)
    assert message.startswith("2 of 3 references cannot be accepted; nothing was changed:")
    assert "0.16.0 already answers" in message and "0.14.0 is deleted" in message
    assert store.history(REF.name, "0.15.0") == []  # the good one was not accepted either
    (result,) = asyncio.run(actions.accept_all(acts, [REF], "re-release", "cli:test"))
    assert result.outcome == "accepted" and result.event is not None
    assert result.event.new_digest == NEW

    # drifted or deleted, by repository then tag (0.15.0 was just accepted, 0.16.0 is ok)
    assert actions.drifted_refs(store) == [elsewhere, deleted]
    assert actions.drifted_refs(store, "ghcr.io/acme/other") == [elsewhere]
    assert actions.drifted_refs(store, "ghcr.io/acme/none") == []
    assert actions.nothing_drifted(store, "ghcr.io/acme/none").startswith(
        "no tags of ghcr.io/acme/none recorded"
    )
    store.apply_changes(
        elsewhere.name,
        AT,
        [models.Change(elsewhere.name, "1.0.0", rows_ok(elsewhere))],
    )
    assert actions.drifted_refs(store, "ghcr.io/acme/other") == []
    assert actions.nothing_drifted(store, "ghcr.io/acme/other").startswith(
        "nothing drifted in ghcr.io/acme/other"
    )


def rows_ok(ref: models.ImageRef) -> models.TagRecord:
    assert ref.tag is not None
    return models.TagRecord(ref.name, ref.tag, OLD, OLD, None, S.OK, AT, AT, AT)


@pytest.mark.parametrize(
    ("refs", "drifted", "repository", "digest", "refusal"),
    [
        ([], False, None, None, "needs a REF"),
        (["a:1"], True, None, None, "give no REF"),
        (["a:1"], False, "ghcr.io/a", None, "needs a REF"),
        (["a:1", "b:1"], False, None, OLD, "--digest goes with a single REF"),
        ([], True, None, OLD, "--digest goes with a single REF"),
    ],
)
def test_what_a_restore_of_several_refuses(
    refs: list[str], drifted: bool, repository: str | None, digest: str | None, refusal: str
) -> None:
    with pytest.raises(errors.UsageError, match=refusal):
        actions.check_restore_request(refs, drifted, repository, digest)
    actions.check_restore_request(["a:1"], False, None, digest)  # one REF: anything goes
    actions.check_restore_request([], True, repository, None)


async def test_a_tag_moved_since_the_last_check_is_not_called_nothing_to_do(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """The record says ok, but the tag was overwritten after the last check: the plan asks the
    registry before saying "nothing to do", and the restore puts the release back."""
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    release = pusher.image(repo, "0.15.0", seed="release")
    await checker.check_watch(watch)
    rebuilt = pusher.image(repo, "0.15.0", seed="unseen")  # no check has seen this yet
    ref = models.ImageRef.parse(f"{watch.name}:0.15.0")
    acts = actions.Actions(
        store, Hold(store, "0.15.0"), clock=Clock(), registries=checker.clients.get
    )
    try:
        (planned,) = await actions.plan_all(acts, [ref], None, "cli:test")
        assert planned.outcome == "planned" and planned.plan is not None
        assert planned.plan.unseen == rebuilt.digest and not planned.plan.nothing_to_do
        assert (
            f"  the tag answers {rebuilt.digest} now: moved since the last check, unseen yet"
            in planned.plan.describe()
        )
        done = await actions.restore_planned(acts, planned, None, "cli:test")
        assert done.outcome == "restored", done.reason
        assert fetch(registry, repo, "0.15.0").headers["docker-content-digest"] == release.digest
        (again,) = await actions.plan_all(acts, [ref], None, "cli:test")
        assert again.outcome == "nothing_to_do"  # now the registry agrees with the record
    finally:
        await checker.clients.aclose()
