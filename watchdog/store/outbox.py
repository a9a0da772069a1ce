"""The alert outbox's queries, behind one class: ``Outbox`` (``alerts.outbox.OutboxStore``).

One row per (alerted event, channel), written by ``repo.Store`` in the event's own transaction
(through ``Outbox.queue_events``), and one per (notice, channel); the delivery worker leases due
rows, and records each send's start and outcome. Each public method but ``queue_events`` is one
transaction and raises only ``errors.StoreError``. The store knows the worker only by the shape
of these methods: it imports nothing of ``alerts``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from watchdog import errors, models
from watchdog.store import db, rows, tables

T = tables.tags
E = tables.events
OB = tables.outbox

# Events that reach a person; first sight of a tag is a silent baseline, an accept was done by one.
ALERTED_KINDS = frozenset(
    k for k in models.EventKind if k not in (models.EventKind.FIRST_SEEN, models.EventKind.ACCEPTED)
)

# A claim reads this many pending rows for each one it may hand out: some are busy or blocked.
_CANDIDATES_PER_CLAIM = 4

# The key that keeps a tag's alerts on one channel in order: (channel, repository, tag).
_Key = tuple[str, str | None, str | None]


class Outbox:
    """The alerts outbox of one database, for the configured alert ``channels``."""

    def __init__(self, engine: Engine, *, channels: Sequence[str] = ()) -> None:
        """``channels``: the configured alert channels (e.g. ``("slack",)``); every alerted
        event and every notice gets one row per channel."""
        self.engine = engine
        self.channels = tuple(channels)

    # --- queueing --------------------------------------------------------------------------------

    def queue_events(self, conn: sa.Connection, events: Sequence[models.Event]) -> None:
        """Queue the alerts of ``events`` (saved, with their ids) inside the caller's
        transaction ``conn``: an event and its alerts are written together or not at all."""
        queued = [
            _outbox_row(channel, e.at, event=e)
            for e in events
            if e.kind in ALERTED_KINDS
            for channel in self.channels
        ]
        if queued:
            conn.execute(sa.insert(OB), queued)

    def enqueue_notice(self, notice: Mapping[str, Any], now: dt.datetime) -> None:
        """Queue an alert about the watchdog itself (``notice["kind"]`` names it, e.g.
        ``registry_unreachable``) on every configured channel, in one transaction."""
        rows.require_aware(now)
        if not self.channels:
            return
        queued = [_outbox_row(c, now, notice=dict(notice)) for c in self.channels]
        with db.writing(self.engine) as conn:
            conn.execute(sa.insert(OB), queued)

    # --- delivery --------------------------------------------------------------------------------

    def claim_alerts(
        self, now: dt.datetime, *, lease: float, limit: int = 50
    ) -> list[models.OutboxItem]:
        """Lease up to ``limit`` pending alerts that are due at ``now``, oldest first, for
        ``lease`` seconds, and count one more attempt on each.

        A row already leased by someone else (another worker, or one that crashed less than
        ``lease`` ago) is not handed out; neither is a row queued after an undelivered one about
        the same tag on the same channel (so that follow-ups keep their order and their thread).
        Each claim is a conditional UPDATE: two workers never hold one row.
        """
        rows.require_aware(now)
        until = now + dt.timedelta(seconds=lease)
        with db.writing(self.engine) as conn:
            claimed = _claim(conn, now, until, limit)
            return _items(conn, claimed) if claimed else []

    def begin_send(self, item_id: int, at: dt.datetime, key: str) -> None:
        """Record, before alert ``item_id`` is sent, that a send starts whose outcome will be
        unknown until it is recorded: ``sent_at = at`` and the ``key`` it carries (a key already
        stored is kept: the lookup must find any earlier send too). Committed before this
        returns, so that after a crash the next worker knows to look before sending again."""
        rows.require_aware(at)
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(OB)
                .where(OB.c.id == item_id, OB.c.status == "pending")
                .values(sent_at=at, send_key=sa.func.coalesce(OB.c.send_key, key))
            )

    def mark_delivered(
        self,
        item_id: int,
        now: dt.datetime,
        remote_id: str | None,
        remote_channel: str | None = None,
    ) -> None:
        """Record that alert ``item_id`` reached its channel (``remote_id``: the channel's id of
        the message, e.g. Slack's ts; ``remote_channel``: the id of the conversation it went
        to, e.g. Slack's channel id). Committed before this returns."""
        rows.require_aware(now)
        self._finish(
            item_id,
            status="delivered",
            delivered_at=now,
            remote_id=remote_id,
            remote_channel=remote_channel,
        )

    def last_remote_channel(self, channel: str) -> str | None:
        """The conversation id (e.g. Slack's channel id) of the newest alert delivered on
        ``channel`` that recorded one, or None."""
        query = (
            sa.select(OB.c.remote_channel)
            .where(
                OB.c.channel == channel,
                OB.c.status == "delivered",
                OB.c.remote_channel.is_not(None),
            )
            .order_by(OB.c.id.desc())
            .limit(1)
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return str(value) if value is not None else None

    def mark_failed(self, item_id: int, now: dt.datetime, reason: str) -> None:
        """Give up on alert ``item_id`` for good, keeping ``reason`` (one line, no secrets)."""
        rows.require_aware(now)
        self._finish(
            item_id, status="failed", delivered_at=None, last_error=errors.truncate(reason, 500)
        )

    def retry_alert(
        self, item_id: int, next_try: dt.datetime, reason: str, *, not_sent: bool = False
    ) -> None:
        """Release alert ``item_id`` to be tried again at ``next_try``, keeping ``reason``.
        ``not_sent``: the channel is known not to have the alert (it refused this send and no
        earlier send is in doubt), so ``sent_at`` is cleared and the next try needs no lookup."""
        rows.require_aware(next_try)
        values: dict[str, Any] = {
            "next_try": next_try,
            "lease_until": None,
            "last_error": errors.truncate(reason, 500),
        }
        if not_sent:
            values["sent_at"] = None
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(OB).where(OB.c.id == item_id, OB.c.status == "pending").values(**values)
            )

    # --- reads -----------------------------------------------------------------------------------

    def pending_alerts(self) -> int:
        """How many alerts are queued and not yet delivered (nor given up on)."""
        query = sa.select(sa.func.count()).select_from(OB).where(OB.c.status == "pending")
        with db.translating(self.engine), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def next_alert_due(self) -> dt.datetime | None:
        """When the earliest pending alert is due (or its lease ends), or None with none pending."""
        query = sa.select(sa.func.min(sa.func.coalesce(OB.c.lease_until, OB.c.next_try))).where(
            OB.c.status == "pending"
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        if value is None:
            return None
        if isinstance(value, str):  # SQLite's min() over a computed value loses the type
            value = dt.datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def outbox_rows(self) -> list[dict[str, Any]]:
        """Every outbox row as plain data, oldest first (for ``alerts`` commands and tests)."""
        with db.translating(self.engine), self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(OB).order_by(OB.c.id)).mappings()]

    def _finish(self, item_id: int, **values: Any) -> None:
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(OB)
                .where(OB.c.id == item_id, OB.c.status == "pending")
                .values(lease_until=None, **values)
            )


# --- claiming ------------------------------------------------------------------------------------


def _claim(conn: sa.Connection, now: dt.datetime, until: dt.datetime, limit: int) -> list[int]:
    """Lease up to ``limit`` due rows until ``until``, oldest first, skipping every row queued
    after a busy (not yet due, or leased) one of the same tag and channel; their ids."""
    query = (
        sa.select(OB.c.id, OB.c.channel, OB.c.repository, OB.c.tag, OB.c.next_try, OB.c.lease_until)
        .where(OB.c.status == "pending")
        .order_by(OB.c.id)
        .limit(limit * _CANDIDATES_PER_CLAIM)
    )
    claimed: list[int] = []
    blocked: set[_Key] = set()
    for row in conn.execute(query):
        key = (row.channel, row.repository, row.tag)
        busy = row.next_try > now or (row.lease_until is not None and row.lease_until > now)
        if row.tag is not None and key in blocked:
            continue
        if busy:
            blocked.add(key)
            continue
        won = conn.execute(
            sa.update(OB)
            .where(
                OB.c.id == row.id,
                OB.c.status == "pending",
                sa.or_(OB.c.lease_until.is_(None), OB.c.lease_until <= now),
            )
            .values(lease_until=until, attempts=OB.c.attempts + 1)
        ).rowcount
        if won == 1:
            claimed.append(row.id)
        blocked.add(key)
        if len(claimed) >= limit:
            break
    return claimed


def _items(conn: sa.Connection, claimed: Sequence[int]) -> list[models.OutboxItem]:
    """The claimed rows as outbox items, oldest first: each with its event (and when its tag
    was first seen) or its notice, and the thread its tag's alerts go to on its channel."""
    query = (
        sa.select(OB, T.c.first_seen, *[E.c[c.name].label("e_" + c.name) for c in E.c])
        .select_from(
            OB.outerjoin(E, E.c.id == OB.c.event_id).outerjoin(
                T, sa.and_(T.c.repository == OB.c.repository, T.c.tag == OB.c.tag)
            )
        )
        .where(OB.c.id.in_(claimed))
        .order_by(OB.c.id)
    )
    items = []
    for m in conn.execute(query).mappings():
        event = None
        if m["event_id"] is not None:
            event = rows.event({c.name: m["e_" + c.name] for c in E.c})
        items.append(
            models.OutboxItem(
                id=m["id"],
                channel=m["channel"],
                attempts=m["attempts"],
                created_at=m["created_at"],
                event=event,
                notice=dict(m["notice"]) if m["notice"] is not None else None,
                first_seen=m["first_seen"],
                thread_id=_thread(conn, (m["channel"], m["repository"], m["tag"])),
                sent_at=m["sent_at"],
                send_key=m["send_key"],
            )
        )
    return items


def _thread(conn: sa.Connection, key: _Key) -> str | None:
    """The channel's id of the first delivered alert about the tag ``key`` names (the thread
    its follow-ups go to), or None: for a notice, or before one was delivered."""
    channel, repository, tag = key
    if tag is None:
        return None
    query = (
        sa.select(OB.c.remote_id)
        .where(
            OB.c.channel == channel,
            OB.c.repository == repository,
            OB.c.tag == tag,
            OB.c.status == "delivered",
            OB.c.remote_id.is_not(None),
        )
        .order_by(OB.c.id)
        .limit(1)
    )
    value = conn.execute(query).scalar()
    return None if value is None else str(value)


def _outbox_row(
    channel: str,
    at: dt.datetime,
    *,
    event: models.Event | None = None,
    notice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event.id if event is not None else None,
        "notice": notice,
        "channel": channel,
        "repository": event.repository if event is not None else None,
        "tag": event.tag if event is not None else None,
        "status": "pending",
        "attempts": 0,
        "created_at": at,
        "next_try": at,
    }
