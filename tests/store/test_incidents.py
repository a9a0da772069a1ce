"""Incidents in the store (store.incidents), on SQLite and PostgreSQL: which changes belong
together, follow-ups joining their tag's incident, and one incident however many writers."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from watchdog import models
from watchdog.store import db, repo
from watchdog.store import incidents as incidents_module

K = models.EventKind
T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def _grouped(store: repo.Store, **grouping: object) -> repo.Store:
    return repo.Store(store.engine, channels=("slack",), grouping=models.Grouping(**grouping))  # type: ignore[arg-type]


def _event(repository: str, tag: str, kind: K, at: dt.datetime) -> list[models.Event]:
    return [models.Event(repository, tag, kind, at, old_digest=OLD, new_digest=NEW)]


def _write(
    store: repo.Store, repository: str, tag: str, kind: K = K.MOVED, seconds: float = 0
) -> models.Event:
    at = T0 + dt.timedelta(seconds=seconds)
    (saved,) = store.apply_changes(
        repository,
        at,
        [models.Change(repository, tag, event=_event(repository, tag, kind, at)[0])],
    )
    return saved


@pytest.mark.parametrize(
    ("by", "repository", "key"),
    [
        ("namespace", "ghcr.io/deephaven/server", "ghcr.io/deephaven"),
        ("namespace", "ghcr.io/deephaven/sub/server", "ghcr.io/deephaven"),
        ("namespace", "localhost:5000/app", "localhost:5000"),
        ("repository", "ghcr.io/deephaven/server", "ghcr.io/deephaven/server"),
        ("registry", "ghcr.io/deephaven/server", "ghcr.io"),
    ],
)
def test_grouping_keys(by: str, repository: str, key: str) -> None:
    assert models.Grouping(by=by).key(repository) == key


def test_changes_within_the_window_of_the_last_one_share_an_incident(store: repo.Store) -> None:
    s = _grouped(store, window=60.0)
    first = _write(s, "ghcr.io/acme/api", "1.0.0")
    assert first.opens_incident and first.incident_id is not None
    same = _write(s, "ghcr.io/acme/web", "1.0.0", seconds=50)  # another repository, one namespace
    slid = _write(s, "ghcr.io/acme/api", "1.1.0", K.DELETED, seconds=100)  # the window slides
    other = _write(s, "ghcr.io/other/db", "1.0.0", seconds=100)  # another namespace
    late = _write(s, "ghcr.io/acme/api", "1.2.0", seconds=161)  # past the window: a new one
    assert {same.incident_id, slid.incident_id} == {first.incident_id}
    assert not same.opens_incident and not slid.opens_incident
    assert other.opens_incident and other.incident_id != first.incident_id
    assert late.opens_incident and late.incident_id not in (first.incident_id, other.incident_id)
    incident = s.incidents.get(first.incident_id)
    assert incident is not None
    assert [e.id for e in incident.events] == [first.id, same.id, slid.id]
    assert incident.opened_at == T0 and incident.closes_at == T0 + dt.timedelta(seconds=160)
    # the newest first, and by repository
    assert [i.id for i in s.incidents.recent()][:1] == [late.incident_id]
    assert {i.id for i in s.incidents.recent(repository="ghcr.io/other/db")} == {other.incident_id}


def test_follow_ups_join_their_tag_s_last_change_whenever_they_come(store: repo.Store) -> None:
    s = _grouped(store, window=60.0)
    moved = _write(s, "ghcr.io/acme/api", "1.0.0")
    restored = _write(s, "ghcr.io/acme/api", "1.0.0", K.RESTORED, seconds=3600)
    accepted = _write(s, "ghcr.io/acme/api", "1.0.0", K.ACCEPTED, seconds=7200)
    assert restored.incident_id == accepted.incident_id == moved.incident_id
    assert not restored.opens_incident
    # first sight joins nothing, nor does a follow-up of a tag that never changed
    assert _write(s, "ghcr.io/acme/api", "2.0.0", K.FIRST_SEEN).incident_id is None
    assert _write(s, "ghcr.io/acme/api", "2.0.0", K.REVERTED).incident_id is None


def test_a_zero_window_makes_every_change_an_incident_and_none_when_off(
    store: repo.Store,
) -> None:
    s = _grouped(store, window=0.0)
    a = _write(s, "ghcr.io/acme/api", "1.0.0")
    b = _write(s, "ghcr.io/acme/api", "1.1.0")
    assert a.opens_incident and b.opens_incident and a.incident_id != b.incident_id
    off = repo.Store(store.engine, channels=("slack",))  # grouping=None
    c = _write(off, "ghcr.io/acme/api", "1.2.0")
    assert c.incident_id is None
    # an event outside incidents keeps its own outbox row
    assert [r["event_id"] for r in off.outbox.outbox_rows() if r["incident_id"] is None] == [c.id]


def test_writers_racing_on_one_namespace_open_one_incident(store: repo.Store) -> None:
    """Eight checks of eight repositories of one namespace write at the same moment (on
    PostgreSQL, each on its own connection): one incident, one opening row."""
    s = _grouped(store, window=60.0)
    start = threading.Barrier(8)
    saved: list[models.Event] = []
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            start.wait()
            saved.append(_write(s, f"ghcr.io/acme/app{i}", "1.0.0"))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert len({e.incident_id for e in saved}) == 1
    assert sum(e.opens_incident for e in saved) == 1
    rows = s.outbox.outbox_rows()
    assert [r["part"] for r in rows].count("opening") == 1


def test_a_follow_up_waits_for_a_change_of_its_incident_being_written(store: repo.Store) -> None:
    """A restore written while a change of its incident is being written waits for it: the
    events of an incident commit in the order of their ids, so a message that showed up to id N
    (``outbox.covers``) has missed none below N."""
    s = _grouped(store, window=60.0)
    _write(s, "ghcr.io/acme/api", "1.0.0")
    held, done = threading.Event(), threading.Event()
    release = threading.Event()

    def hold_the_key() -> None:  # what a check writing a change of ghcr.io/acme holds
        with db.writing(s.engine) as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
            incidents_module._lock(conn, "ghcr.io/acme")  # PostgreSQL: the key's lock
            held.set()
            release.wait(10)

    def follow_up() -> None:
        held.wait(10)
        _write(s, "ghcr.io/acme/api", "1.0.0", K.RESTORED, seconds=1)
        done.set()

    threads = [threading.Thread(target=hold_the_key), threading.Thread(target=follow_up)]
    for t in threads:
        t.start()
    try:
        assert held.wait(10)
        assert not done.wait(1.0)  # waiting for the change's transaction
    finally:
        release.set()
        for t in threads:
            t.join(20)
    assert done.is_set()
