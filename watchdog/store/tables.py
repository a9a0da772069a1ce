"""The store's tables, as SQLAlchemy Core metadata.

Alembic (``migrations/``) owns the schema: these definitions describe it for queries and for
autogenerate, and a test checks that they match what the migrations create. Every datetime column
is :class:`UTCDateTime`: timezone-aware UTC in, timezone-aware UTC out, on every backend.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import interfaces

# Deterministic constraint names: Alembic needs names to alter or drop constraints later, and
# SQLite's batch mode rebuilds tables by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Lengths: a registry host plus a repository path (at most 255) fits 512; tags are at most 128
# characters; digests are "sha256:" + 64 hex today, with room for longer algorithms.
REPOSITORY = 512
TAG = 128
DIGEST = 135
MEDIA_TYPE = 255


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timestamp that is timezone-aware UTC going in and coming out.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    and made aware again on load. Naive datetimes are refused: their meaning is a guess.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(
        self, value: dt.datetime | None, dialect: interfaces.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware datetimes")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(
        self, value: dt.datetime | None, dialect: interfaces.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def copy(self, **kw: Any) -> UTCDateTime:
        return UTCDateTime()


# Event ids grow forever; SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid), which is
# 64-bit anyway.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

TAG_STATES = ("ok", "drifted", "deleted", "broken")

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repository", sa.String(REPOSITORY), nullable=False),
    sa.Column("tag", sa.String(TAG), nullable=False),
    sa.Column("recorded_digest", sa.String(DIGEST), nullable=False),
    sa.Column("current_digest", sa.String(DIGEST), nullable=True),
    sa.Column("media_type", sa.String(MEDIA_TYPE), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("missing_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_seen", UTCDateTime(), nullable=False),
    sa.Column("last_checked", UTCDateTime(), nullable=False),
    sa.Column("last_changed", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("repository", "tag"),
    sa.CheckConstraint("state IN ('ok', 'drifted', 'deleted', 'broken')", name="state"),
)

# Append-only: rows are inserted, never updated or deleted.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("repository", sa.String(REPOSITORY), nullable=False),
    sa.Column("tag", sa.String(TAG), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("old_digest", sa.String(DIGEST), nullable=True),
    sa.Column("new_digest", sa.String(DIGEST), nullable=True),
    sa.Column("detail", sa.JSON(), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    # the incident the event belongs to (migration 0006), set when it is inserted
    sa.Column("incident_id", _BIG_ID, nullable=True),
    sa.Index(None, "repository", "tag", "id"),
    sa.Index(None, "incident_id"),
)

# The manifest archive: the exact bytes a registry served, keyed by their (verified) digest.
manifests = sa.Table(
    "manifests",
    metadata,
    sa.Column("repository", sa.String(REPOSITORY), primary_key=True),
    sa.Column("digest", sa.String(DIGEST), primary_key=True),
    sa.Column("media_type", sa.String(MEDIA_TYPE), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("archived_at", UTCDateTime(), nullable=False),
)

watches = sa.Table(
    "watches",
    metadata,
    sa.Column("repository", sa.String(REPOSITORY), primary_key=True),
    sa.Column("last_attempt", UTCDateTime(), nullable=True),
    sa.Column("last_success", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("consecutive_errors", sa.Integer, nullable=False, server_default="0"),
)

OUTBOX_STATUSES = ("pending", "delivered", "failed")

# The alert outbox: one row per (event, channel), inserted in the transaction of its event, so an
# alert is never lost nor sent for an event that was rolled back. A row without an event carries a
# ``notice`` (an alert about the watchdog itself). Rows are updated only by the delivery worker.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("event_id", _BIG_ID, sa.ForeignKey("events.id"), nullable=True),
    sa.Column("notice", sa.JSON(), nullable=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("repository", sa.String(REPOSITORY), nullable=True),
    sa.Column("tag", sa.String(TAG), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_try", UTCDateTime(), nullable=False),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("remote_id", sa.String(64), nullable=True),  # e.g. Slack's message ts, for threads
    # A send whose outcome is unknown (migration 0003): when the earliest such send started, the
    # key it carried in Slack's message metadata, and the Slack channel id the message went to.
    sa.Column("sent_at", UTCDateTime(), nullable=True),
    sa.Column("send_key", sa.String(32), nullable=True),
    sa.Column("remote_channel", sa.String(32), nullable=True),
    # An incident's message (migration 0006): ``part`` is ``opening`` (its first message) or
    # ``update`` (what joined it after that); ``covers``: the highest event id the message showed.
    sa.Column("incident_id", _BIG_ID, nullable=True),
    sa.Column("part", sa.String(16), nullable=True),
    sa.Column("covers", _BIG_ID, nullable=True),
    sa.UniqueConstraint("event_id", "channel"),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    sa.Index(None, "status", "next_try"),
    sa.Index(None, "channel", "repository", "tag"),
    sa.Index(None, "incident_id", "channel"),
)

APPLICATION_TABLES: tuple[str, ...] = ("tags", "events", "manifests", "watches", "outbox")

VAULT_STATES = ("pending", "kept", "failed")

# The vault's copies (migration 0004): one row per (repository, tag, digest) a vaulted watch asked
# to keep, inserted in the transaction of the event that asked (first_seen, accepted, restored).
# ``kept`` only once the vault's tag answered the digest; ``vault_repository``/``vault_tag``: where.
vault_copies = sa.Table(
    "vault_copies",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("repository", sa.String(REPOSITORY), nullable=False),
    sa.Column("tag", sa.String(TAG), nullable=False),
    sa.Column("digest", sa.String(DIGEST), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("next_try", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("vault_repository", sa.String(REPOSITORY), nullable=True),
    sa.Column("vault_tag", sa.String(TAG), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.UniqueConstraint("repository", "tag", "digest"),
    sa.CheckConstraint("state IN ('pending', 'kept', 'failed')", name="state"),
    sa.Index(None, "state", "next_try"),
)

APPLICATION_TABLES = (*APPLICATION_TABLES, "vault_copies")

# Incidents (migration 0006): the changes (moves, deletions, broken releases) of one grouping key
# found within the window of each other. ``closes_at``: the last change plus the window; a change
# of the same key found before it joins the incident, one found after opens a new one.
incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("group_key", sa.String(REPOSITORY), nullable=False),
    sa.Column("opened_at", UTCDateTime(), nullable=False),
    sa.Column("last_change_at", UTCDateTime(), nullable=False),
    sa.Column("closes_at", UTCDateTime(), nullable=False),
    sa.Index(None, "group_key", "closes_at"),
)

APPLICATION_TABLES = (*APPLICATION_TABLES, "incidents")

# Who pushed (migration 0007): registry notifications' pushers, kept for the push ledger's window
# (notifications.LEDGER_WINDOW) so that every replica's check can name them; pruned as rows come.
pushes = sa.Table(
    "pushes",
    metadata,
    sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(255), nullable=True),
    sa.Column("repository", sa.String(REPOSITORY), nullable=False),  # the path in the registry
    sa.Column("tag", sa.String(TAG), nullable=True),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("digest", sa.String(DIGEST), nullable=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(200), nullable=True),
    sa.Column("address", sa.String(200), nullable=True),
    sa.Column("user_agent", sa.String(200), nullable=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Index(None, "repository", "at"),
    sa.Index(None, "at"),
)

APPLICATION_TABLES = (*APPLICATION_TABLES, "pushes")
