"""Splitting the watches between replicas that share one PostgreSQL database.

Time is cut into slots, one interval long, on a grid that is the same on every replica (wall
clock) and shifted per watch (so that watches spread over the interval). Every replica schedules
every watch at the start of each of its slots; the first to claim the slot checks it, the others
skip: exactly one scheduled check per watch per slot, whatever the number of replicas.

On PostgreSQL a claim is a session-level advisory lock on the watch (held on its own connection for
as long as the check runs, so no two replicas ever check a watch at once) plus, for a scheduled
check, a conditional UPDATE of the ``watches`` row that stamps ``last_attempt`` only if no one has
attempted the watch in this slot yet (row locks make it atomic: of two replicas racing, one
updates one row, the other none). A replica that dies loses its connection and with it its locks:
another replica checks its watches in the next slot. No coordinator, no lease table.

On SQLite there is one daemon per file (``store.lock``), so every claim is granted.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from watchdog.store import db, tables

# A namespace for our advisory lock keys (two-int form), so they never collide with the
# migration lock or another application's keys on a shared server.
_LOCK_NAMESPACE = 0x7477  # "tw"


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def slot_start(repository: str, interval: float, now: dt.datetime) -> dt.datetime:
    """The start of the slot of ``repository`` that ``now`` falls in: slots are ``interval``
    seconds long, on a grid every replica computes alike, shifted by a per-watch offset.

    Integer microseconds throughout: a moment exactly on a slot boundary belongs to the slot it
    starts (float rounding would put it in the one before, and a trigger would fire twice)."""
    length = max(1, round(interval * 1_000_000))
    offset = db.advisory_key(repository) % length
    t = (now - _EPOCH) // _US
    return _EPOCH + (((t - offset) // length) * length + offset) * _US


class Claim:
    """A granted claim: hold it while checking, then ``release()`` it (from any thread)."""

    def __init__(self, conn: sa.Connection | None, key: int) -> None:
        self._conn = conn
        self._key = key

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_NAMESPACE, self._key)))
            conn.commit()
        except sa.exc.SQLAlchemyError:
            # The connection is gone, and PostgreSQL released the lock with the session.
            pass
        finally:
            conn.close()


class Claims:
    """Claims on watches, for running several daemons on one PostgreSQL database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shared = engine.url.get_backend_name() == "postgresql"

    def acquire(
        self, repository: str, now: dt.datetime, *, slot: dt.datetime | None
    ) -> Claim | None:
        """A Claim when this process may check ``repository`` now, None when it must skip it.

        ``slot``: for a scheduled check, the start of the current slot (``slot_start``): the
        claim is granted only if no one attempted the watch since, and stamps the attempt. None
        for a check that must run now (a registry notification). Blocking (call it from a worker
        thread); raises errors.StoreError subclasses.
        """
        if not self.shared:
            return Claim(None, 0)
        key = db.advisory_key(repository)
        conn = None
        with db.translating(self.engine):
            try:
                conn = self.engine.connect()
                got = conn.execute(
                    sa.select(sa.func.pg_try_advisory_lock(_LOCK_NAMESPACE, key))
                ).scalar_one()
                conn.commit()
                if not got:
                    conn.close()
                    return None
                claim = Claim(conn, key)
                if slot is not None and not self._stamp(conn, repository, now, slot):
                    claim.release()
                    return None
                return claim
            except BaseException:
                if conn is not None:
                    conn.close()
                raise

    @staticmethod
    def _stamp(conn: sa.Connection, repository: str, now: dt.datetime, slot: dt.datetime) -> bool:
        """Stamp the attempt of ``repository`` at ``now`` unless one was made since ``slot``."""
        w = tables.watches
        won = conn.execute(
            sa.update(w)
            .where(
                w.c.repository == repository,
                sa.or_(w.c.last_attempt.is_(None), w.c.last_attempt < slot),
            )
            .values(last_attempt=now)
        ).rowcount
        if won == 0:  # no row yet (a watch never checked), or attempted in this slot already
            inserted = conn.execute(
                postgresql.insert(w)
                .values(repository=repository, last_attempt=now, consecutive_errors=0)
                .on_conflict_do_nothing(index_elements=["repository"])
                .returning(w.c.repository)
            ).first()
            won = 1 if inserted is not None else 0
        conn.commit()
        return bool(won == 1)
