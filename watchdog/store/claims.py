"""Splitting the watches between replicas that share one PostgreSQL database.

Every replica schedules every watch; before checking one it asks for a claim. On PostgreSQL a
claim is a session-level advisory lock on the watch (held on its own connection for as long as the
check runs, so no two replicas ever check a watch at once) plus, for a scheduled check, the rule
that the watch was not attempted within ``min_age`` (so one replica, the first whose timer fires,
checks it once per interval). A replica that dies loses its connection and with it its locks:
the next replica whose timer fires takes the watch over, within one interval. No coordinator,
no lease table: PostgreSQL's own locks and the ``watches`` row the check writes anyway.

On SQLite there is one daemon per file (``store.lock``), so every claim is granted.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watchdog.store import db, tables

# A namespace for our advisory lock keys (two-int form), so they never collide with the
# migration lock or another application's keys on a shared server.
_LOCK_NAMESPACE = 0x7477  # "tw"


def _key(repository: str) -> int:
    return int.from_bytes(hashlib.sha256(repository.encode()).digest()[:4], "big", signed=True)


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

    def acquire(self, repository: str, now: dt.datetime, *, min_age: float | None) -> Claim | None:
        """A Claim when this process may check ``repository`` now, None when it must skip it.

        ``min_age``: skip unless the watch's last attempt is at least this many seconds old
        (scheduled checks); None for a check that must run now (a registry notification).
        Blocking (call it from a worker thread); raises errors.StoreError subclasses.
        """
        if not self.shared:
            return Claim(None, 0)
        key = _key(repository)
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
                if min_age is not None:
                    last = conn.execute(
                        sa.select(tables.watches.c.last_attempt).where(
                            tables.watches.c.repository == repository
                        )
                    ).scalar_one_or_none()
                    conn.commit()
                    if last is not None and (now - last).total_seconds() < min_age:
                        claim.release()
                        return None
                return claim
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
