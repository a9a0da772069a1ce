"""Who pushed, shared by every replica: registry notifications' pushers in the store.

The daemon that receives a notification notes its pusher here (``Pushes.note``) as well as in
its own memory (``notifications.PushLedger``); the check that finds the change reads the
repository's recent pushes (``Pushes.recent``) when its own memory names nobody, so the pusher
is named whichever replica the notification reached. Rows older than the ledger's window are
pruned as new ones are noted. Each public method is one transaction and raises only
``errors.StoreError``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watchdog import notifications
from watchdog.store import db, rows, tables

P = tables.pushes


class Pushes:
    """The recent pushes of one database, kept ``window`` seconds."""

    def __init__(self, engine: Engine, *, window: float = notifications.LEDGER_WINDOW) -> None:
        self.engine = engine
        self.window = window

    def note(self, events: Sequence[notifications.RegistryEvent], now: dt.datetime) -> int:
        """Keep the pushes and deletes of ``events`` that name a pusher, at ``now``, and forget
        those older than the window; how many were kept."""
        rows.require_aware(now)
        kept = [
            {
                "host": e.host,
                "repository": e.repository,
                "tag": e.tag,
                "action": e.action,
                "digest": e.digest,
                "source": e.pusher.source,
                "actor": e.pusher.actor,
                "address": e.pusher.address,
                "user_agent": e.pusher.user_agent,
                "at": now,
            }
            for e in events
            if e.pusher is not None and e.action in ("push", "delete")
        ]
        if not kept:
            return 0  # pulls and the like: no write transaction for them
        with db.writing(self.engine) as conn:
            conn.execute(sa.insert(P), kept)
            conn.execute(sa.delete(P).where(P.c.at < now - dt.timedelta(seconds=self.window)))
        return len(kept)

    def recent(
        self, repository: str, now: dt.datetime
    ) -> list[tuple[notifications.RegistryEvent, dt.datetime]]:
        """The pushes and deletes of ``repository`` (its path in the registry) within the window
        before ``now``, oldest first, with when they were noted."""
        rows.require_aware(now)
        query = (
            sa.select(P)
            .where(
                P.c.repository == repository,
                P.c.at >= now - dt.timedelta(seconds=self.window),
            )
            .order_by(P.c.at, P.c.id)
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            return [
                (
                    notifications.RegistryEvent(
                        action=r.action,
                        repository=r.repository,
                        tag=r.tag,
                        host=r.host,
                        pusher=notifications.Pusher(
                            source=r.source,
                            actor=r.actor,
                            address=r.address,
                            user_agent=r.user_agent,
                        ),
                        digest=r.digest,
                    ),
                    r.at,
                )
                for r in conn.execute(query)
            ]
