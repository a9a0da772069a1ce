"""Claims on watches (store/claims.py): the slot grid, and one claim per slot on PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from watchdog.store import claims, db

T0 = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("interval", [2.0, 60.0, 3600.0, 7.5])
def test_slots_are_interval_long_and_contain_now(interval: float) -> None:
    for step in range(0, 50):
        now = T0 + dt.timedelta(seconds=step * interval / 7)
        start = claims.slot_start("ghcr.io/deephaven/server", interval, now)
        assert start <= now < start + dt.timedelta(seconds=interval)
        # every moment of a slot maps to the same start: the grid is stable
        later = start + dt.timedelta(seconds=interval * 0.999)
        assert claims.slot_start("ghcr.io/deephaven/server", interval, later) == start


def test_watches_are_spread_over_the_interval() -> None:
    offsets = {
        claims.slot_start(f"ghcr.io/team/app-{i}", 60.0, T0).timestamp() % 60 for i in range(40)
    }
    assert len(offsets) > 30  # not all on the same second of the minute


@pytest.mark.postgres
def test_one_claim_per_slot_on_postgresql(pg_url: str) -> None:
    engine = db.create_engine(pg_url)
    db.ensure_schema(engine, migrate_empty=True)
    a, b = claims.Claims(engine), claims.Claims(engine)
    name, interval = "ghcr.io/deephaven/server", 60.0
    slot = claims.slot_start(name, interval, T0)
    try:
        first = a.acquire(name, T0, slot=slot)  # a watch never checked: its row is created
        assert first is not None
        assert b.acquire(name, T0, slot=slot) is None  # locked: checking right now
        first.release()
        later = T0 + dt.timedelta(seconds=1)
        assert b.acquire(name, later, slot=slot) is None  # free, but this slot is taken
        urgent = b.acquire(name, later, slot=None)  # a notification: checks now anyway
        assert urgent is not None
        urgent.release()
        nxt = slot + dt.timedelta(seconds=interval)
        second = b.acquire(name, nxt, slot=nxt)  # the next slot: the other replica wins it
        assert second is not None
        second.release()
        assert a.acquire(name, nxt, slot=nxt) is None
    finally:
        engine.dispose()


def test_sqlite_grants_every_claim(tmp_path: object) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path}/w.db")
    try:
        c = claims.Claims(engine)
        slot = claims.slot_start("a/b", 60.0, T0)
        for _ in range(3):
            claim = c.acquire("a/b", T0, slot=slot)
            assert claim is not None
            claim.release()
    finally:
        engine.dispose()


def test_a_slot_boundary_belongs_to_the_slot_it_starts() -> None:
    for interval in (1.0, 0.3, 2.0, 60.0, 3599.999):
        start = claims.slot_start("a/b", interval, T0)
        nxt = start + dt.timedelta(seconds=interval)
        assert claims.slot_start("a/b", interval, nxt) == nxt
        assert claims.slot_start("a/b", interval, nxt - dt.timedelta(microseconds=1)) == start
