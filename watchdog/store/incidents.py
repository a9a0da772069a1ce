"""Incidents: which events belong together, and the queries that read them back.

``Incidents.assign`` runs inside the transaction that inserts events (``repo.Store``'s one hook):
a change (a move, a deletion, a broken release) joins the open incident of its grouping key (the
registry and repository namespace by default, ``models.Grouping``) or opens a new one; every
later event of the same tag (restored, accepted, reverted, ...) joins the incident of the tag's
last change. So an incident and its events are written together or not at all.

On PostgreSQL two checks of one key (two repositories of a namespace, on two replicas) may write
at once: a transaction-level advisory lock on the key makes "find the open incident, else open
one" atomic. SQLite writes one transaction at a time (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watchdog import models
from watchdog.store import db, rows, tables

I = tables.incidents  # noqa: E741 (the table's one-letter name, like T, E, M and W)
E = tables.events

# The advisory-lock namespace of incident keys (two-int form): apart from the watches' ("tw").
_LOCK_NAMESPACE = 0x7469  # "ti"

# Events that join the incident of their tag's last change (the first sight of a tag does not).
FOLLOW_UPS = frozenset(
    k
    for k in models.EventKind
    if k not in models.INCIDENT_CHANGES and k is not models.EventKind.FIRST_SEEN
)

MAX_LISTED = 1000


def _lock(conn: sa.Connection, group_key: str) -> None:
    """On PostgreSQL, the transaction-level advisory lock of ``group_key`` (held until the
    caller's transaction ends). SQLite writes one transaction at a time anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.select(sa.func.pg_advisory_xact_lock(_LOCK_NAMESPACE, db.advisory_key(group_key)))
        )


class Incidents:
    """The incidents of one database, grouped by ``grouping`` (None: no grouping, every event
    alerted on its own, as ``incidents: {enabled: false}`` asks)."""

    def __init__(self, engine: Engine, grouping: models.Grouping | None = None) -> None:
        self.engine = engine
        self.grouping = grouping

    # --- in the events' transaction -------------------------------------------------------------

    def assign(self, conn: sa.Connection, events: Sequence[models.Event]) -> list[models.Event]:
        """``events`` (not yet inserted) with their ``incident_id`` set, inside the caller's
        transaction ``conn``: changes open or join an incident, follow-ups join their tag's."""
        if self.grouping is None:
            return list(events)
        out: list[models.Event] = []
        of_tag: dict[tuple[str, str], int | None] = {}  # this batch's tags so far
        for event in events:
            key = (event.repository, event.tag)
            if event.kind in models.INCIDENT_CHANGES:
                incident, opened = self._open_or_join(conn, event)
                of_tag[key] = incident
                out.append(dataclasses.replace(event, incident_id=incident, opens_incident=opened))
            elif event.kind in FOLLOW_UPS:
                if key not in of_tag:
                    joined = of_tag[key] = self._of_last_change(conn, *key)
                    if joined is not None:
                        self._lock_incident(conn, joined)
                out.append(dataclasses.replace(event, incident_id=of_tag[key]))
            else:
                out.append(event)
        return out

    def _open_or_join(self, conn: sa.Connection, event: models.Event) -> tuple[int, bool]:
        assert self.grouping is not None
        group_key = self.grouping.key(event.repository)
        closes = event.at + dt.timedelta(seconds=self.grouping.window)
        _lock(conn, group_key)
        found = conn.execute(
            sa.select(I.c.id, I.c.last_change_at, I.c.closes_at)
            .where(I.c.group_key == group_key, I.c.closes_at > event.at)
            .order_by(I.c.id.desc())
            .limit(1)
        ).first()
        if found is None:
            new_id = conn.execute(
                sa.insert(I)
                .values(
                    group_key=group_key,
                    opened_at=event.at,
                    last_change_at=event.at,
                    closes_at=closes,
                )
                .returning(I.c.id)
            ).scalar_one()
            return int(new_id), True
        conn.execute(
            sa.update(I)
            .where(I.c.id == found.id)
            .values(
                last_change_at=max(found.last_change_at, event.at),
                closes_at=max(found.closes_at, closes),
            )
        )
        return int(found.id), False

    def _lock_incident(self, conn: sa.Connection, incident_id: int) -> None:
        """Hold the lock of ``incident_id``'s grouping key: the events of one incident are then
        inserted (and committed) one transaction after the other, so their ids follow the
        order in which they become visible, and a message that showed up to id N has missed
        none below it (``outbox.covers``)."""
        group_key = conn.execute(sa.select(I.c.group_key).where(I.c.id == incident_id)).scalar()
        if group_key is not None:
            _lock(conn, str(group_key))

    def _of_last_change(self, conn: sa.Connection, repository: str, tag: str) -> int | None:
        """The incident of the tag's latest change, or None (no change, or one recorded before
        incidents existed)."""
        value = conn.execute(
            sa.select(E.c.incident_id)
            .where(
                E.c.repository == repository,
                E.c.tag == tag,
                E.c.kind.in_([k.value for k in models.INCIDENT_CHANGES]),
            )
            .order_by(E.c.id.desc())
            .limit(1)
        ).scalar()
        return None if value is None else int(value)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, incident_id: int) -> models.Incident | None:
        """The incident ``incident_id`` with its events, or None."""
        with db.translating(self.engine), self.engine.connect() as conn:
            return load(conn, incident_id)

    def recent(self, limit: int = 50, repository: str | None = None) -> list[models.Incident]:
        """The ``limit`` latest incidents (at most MAX_LISTED), newest first, with their events;
        only those with an event of ``repository`` when given."""
        query = sa.select(I.c.id).order_by(I.c.id.desc()).limit(max(1, min(limit, MAX_LISTED)))
        if repository is not None:
            query = query.where(
                I.c.id.in_(sa.select(E.c.incident_id).where(E.c.repository == repository))
            )
        with db.translating(self.engine), self.engine.connect() as conn:
            ids = [int(i) for i in conn.execute(query).scalars()]
            return load_many(conn, ids)


def load(conn: sa.Connection, incident_id: int) -> models.Incident | None:
    """The incident ``incident_id`` with its events (oldest first), read on ``conn``."""
    found = load_many(conn, [incident_id])
    return found[0] if found else None


def load_many(conn: sa.Connection, ids: Sequence[int]) -> list[models.Incident]:
    """The incidents ``ids`` (in that order, those that exist) with their events, oldest
    first: two queries whatever the number."""
    if not ids:
        return []
    found = {int(r["id"]): r for r in conn.execute(sa.select(I).where(I.c.id.in_(ids))).mappings()}
    events: dict[int, list[models.Event]] = {i: [] for i in found}
    query = sa.select(E).where(E.c.incident_id.in_(list(found))).order_by(E.c.id)
    for e in conn.execute(query).mappings():
        events[int(e["incident_id"])].append(rows.event(e))
    return [
        models.Incident(
            id=i,
            group_key=found[i]["group_key"],
            opened_at=found[i]["opened_at"],
            last_change_at=found[i]["last_change_at"],
            closes_at=found[i]["closes_at"],
            events=tuple(events[i]),
        )
        for i in ids
        if i in found
    ]
