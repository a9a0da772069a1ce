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
from watchdog.store import db, incidents, rows, tables

T = tables.tags
E = tables.events
OB = tables.outbox

# Events that reach a person; first sight of a tag is a silent baseline, an accept was done by one.
ALERTED_KINDS = frozenset(
    k for k in models.EventKind if k not in (models.EventKind.FIRST_SEEN, models.EventKind.ACCEPTED)
)

# A claim reads this many pending rows for each one it may hand out: some are busy or blocked.
_CANDIDATES_PER_CLAIM = 4

# The key that keeps a tag's alerts on one channel in order: (channel, repository, tag); an
# incident's messages: (channel, "incident", id).
_Key = tuple[str, str | None, str | int | None]


class Outbox:
    """The alerts outbox of one database, for the configured alert ``channels``."""

    def __init__(
        self,
        engine: Engine,
        *,
        channels: Sequence[str] = (),
        wait: float = 0.0,
        update_interval: float = 0.0,
    ) -> None:
        """``channels``: the configured alert channels (e.g. ``("slack",)``); every alerted
        event and every notice gets one row per channel. ``wait``: how long an incident's
        first message waits for the rest of a burst (``incidents.wait``); ``update_interval``:
        how long an update waits to gather what joins after it (``incidents.update_interval``)."""
        self.engine = engine
        self.channels = tuple(channels)
        self.wait = wait
        self.update_interval = update_interval

    # --- queueing --------------------------------------------------------------------------------

    def queue_events(self, conn: sa.Connection, events: Sequence[models.Event]) -> None:
        """Queue the alerts of ``events`` (saved, with their ids and incidents) inside the
        caller's transaction ``conn``: an event and its alerts are written together or not at
        all. An event of an incident gets no row of its own: the incident's opening message
        (queued when the incident opens, due after ``wait`` seconds: 0 by default, the first
        change alerts at once) shows it, or an ``update`` row (due after ``update_interval``,
        gathering what joins meanwhile) says it joined after that message went out."""
        queued = [
            _outbox_row(channel, e.at, event=e)
            for e in events
            if e.kind in ALERTED_KINDS and e.incident_id is None
            for channel in self.channels
        ]
        news: dict[int, tuple[bool, dt.datetime]] = {}  # incident -> (opened here, first at)
        for e in events:
            if e.incident_id is not None:
                opened, at = news.get(e.incident_id, (False, e.at))
                news[e.incident_id] = (opened or e.opens_incident, at)
        if queued:
            conn.execute(sa.insert(OB), queued)
        first = dt.timedelta(seconds=self.wait)
        later = dt.timedelta(seconds=self.update_interval)
        for incident_id, (opened, at) in news.items():
            for channel in self.channels:
                if opened:
                    conn.execute(
                        sa.insert(OB),
                        _incident_row(channel, incident_id, "opening", at, at + first),
                    )
                elif not _absorbed(conn, incident_id, channel, at):
                    conn.execute(
                        sa.insert(OB),
                        _incident_row(channel, incident_id, "update", at, at + later),
                    )

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

    def begin_send(
        self, item_id: int, at: dt.datetime, key: str, covers: int | None = None
    ) -> None:
        """Record, before alert ``item_id`` is sent, that a send starts whose outcome will be
        unknown until it is recorded: ``sent_at = at`` and the ``key`` it carries (a key already
        stored is kept: the lookup must find any earlier send too). Committed before this
        returns, so that after a crash the next worker knows to look before sending again.
        ``covers``: for an incident's message, the highest event id it shows."""
        rows.require_aware(at)
        values: dict[str, Any] = {"sent_at": at, "send_key": sa.func.coalesce(OB.c.send_key, key)}
        if covers is not None:
            values["covers"] = covers
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(OB).where(OB.c.id == item_id, OB.c.status == "pending").values(**values)
            )

    def mark_delivered(
        self,
        item_id: int,
        now: dt.datetime,
        remote_id: str | None,
        remote_channel: str | None = None,
        covers: int | None = None,
    ) -> None:
        """Record that alert ``item_id`` reached its channel (``remote_id``: the channel's id of
        the message, e.g. Slack's ts; ``remote_channel``: the id of the conversation it went
        to, e.g. Slack's channel id; ``covers``: for an incident's message, the highest event
        id it showed, None to keep what ``begin_send`` recorded). Committed before this
        returns."""
        rows.require_aware(now)
        extra = {} if covers is None else {"covers": covers}
        self._finish(
            item_id,
            status="delivered",
            delivered_at=now,
            remote_id=remote_id,
            remote_channel=remote_channel,
            **extra,
        )

    def hurry_incidents(self, now: dt.datetime) -> int:
        """Make every incident message that waits for the rest of its burst due at ``now``
        (``scan``: when it ends, its incidents are complete); how many were."""
        rows.require_aware(now)
        with db.writing(self.engine) as conn:
            return int(
                conn.execute(
                    sa.update(OB)
                    .where(
                        OB.c.status == "pending",
                        OB.c.incident_id.is_not(None),
                        OB.c.sent_at.is_(None),
                        OB.c.attempts == 0,
                        OB.c.next_try > now,
                    )
                    .values(next_try=now)
                ).rowcount
            )

    def defer_alert(self, item_id: int, next_try: dt.datetime) -> None:
        """Hand alert ``item_id`` back, not tried, to be claimed again at ``next_try`` (the
        attempt its claim counted is given back): e.g. a webhook's closing message of an
        incident that is still open."""
        rows.require_aware(next_try)
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(OB)
                .where(OB.c.id == item_id, OB.c.status == "pending")
                .values(next_try=next_try, lease_until=None, attempts=OB.c.attempts - 1)
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
        sa.select(
            OB.c.id,
            OB.c.channel,
            OB.c.repository,
            OB.c.tag,
            OB.c.next_try,
            OB.c.lease_until,
            OB.c.incident_id,
        )
        .where(OB.c.status == "pending")
        .order_by(OB.c.id)
        .limit(limit * _CANDIDATES_PER_CLAIM)
    )
    claimed: list[int] = []
    blocked: set[_Key] = set()
    for row in conn.execute(query):
        key: _Key = (row.channel, row.repository, row.tag)
        if row.incident_id is not None:
            key = (row.channel, "incident", int(row.incident_id))
        busy = row.next_try > now or (row.lease_until is not None and row.lease_until > now)
        if (row.tag is not None or row.incident_id is not None) and key in blocked:
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
        if m["incident_id"] is not None:
            items.append(_incident_item(conn, m))
            continue
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


def _incident_item(conn: sa.Connection, m: sa.RowMapping) -> models.OutboxItem:
    """The claimed incident row ``m`` as an outbox item: the incident as it is now, what its
    delivered messages on the channel covered, and where its first delivered message is."""
    incident_id, channel = int(m["incident_id"]), m["channel"]
    delivered = conn.execute(
        sa.select(OB.c.remote_id, OB.c.remote_channel, OB.c.covers)
        .where(
            OB.c.incident_id == incident_id,
            OB.c.channel == channel,
            OB.c.status == "delivered",
            OB.c.id != m["id"],
        )
        .order_by(OB.c.id)
    ).all()
    parent = next((d for d in delivered if d.remote_id is not None), None)
    incident = incidents.load(conn, incident_id)
    first = next(iter(incident.changes_by_tag().values()), None) if incident else None
    first_seen = None
    if first is not None:
        first_seen = conn.execute(
            sa.select(T.c.first_seen).where(
                T.c.repository == first.repository, T.c.tag == first.tag
            )
        ).scalar()
    return models.OutboxItem(
        id=m["id"],
        channel=channel,
        attempts=m["attempts"],
        created_at=m["created_at"],
        incident=incident,
        first_seen=first_seen,
        part=m["part"],
        covered=max((int(d.covers or 0) for d in delivered), default=0),
        thread_id=None if parent is None else str(parent.remote_id),
        parent_channel=None if parent is None else parent.remote_channel,
        sent_at=m["sent_at"],
        send_key=m["send_key"],
    )


def _absorbed(conn: sa.Connection, incident_id: int, channel: str, now: dt.datetime) -> bool:
    """True when a message of the incident on ``channel`` is queued and not started (not sent,
    not leased): it will show what joined now. The UPDATE (of nothing) takes the row's lock, so
    a worker claiming it at the same moment either waits for this transaction (and then reads
    what it wrote) or has claimed it already (and this finds no such row)."""
    return bool(
        conn.execute(
            sa.update(OB)
            .where(
                OB.c.incident_id == incident_id,
                OB.c.channel == channel,
                OB.c.status == "pending",
                OB.c.sent_at.is_(None),
                sa.or_(OB.c.lease_until.is_(None), OB.c.lease_until <= now),
            )
            .values(next_try=OB.c.next_try)
        ).rowcount
    )


def _incident_row(
    channel: str, incident_id: int, part: str, at: dt.datetime, due: dt.datetime
) -> dict[str, Any]:
    return {
        "event_id": None,
        "notice": None,
        "channel": channel,
        "repository": None,
        "tag": None,
        "status": "pending",
        "attempts": 0,
        "created_at": at,
        "next_try": due,
        "incident_id": incident_id,
        "part": part,
    }


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
