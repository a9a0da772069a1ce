"""Incidents: the changes found within a grouping window, alerted as one message.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by hand and frozen, like 0001 to 0005.

* ``incidents``: one row per incident: its grouping key (by default the registry and the
  repository namespace, e.g. ``ghcr.io/deephaven``), when it opened, when its last change was
  found and when it closes (``last_change_at`` + the window then configured). A change of the
  same key found before ``closes_at`` joins it.
* ``events.incident_id``: the incident an event belongs to (moves, deletions and broken
  releases open or join one; later events of the same tag, restores and accepts among them,
  join the incident of the tag's last change). Set once, when the event is inserted.
* ``outbox.incident_id``, ``outbox.part`` and ``outbox.covers``: an incident's alert rows (its
  ``opening`` message, and ``update`` rows for what joined after it) and the highest event id a
  sent message showed, so that an update says only what is new.

Plain ``ADD``/``DROP COLUMN`` on the existing tables (every column nullable; the indexes come
after), so SQLite (3.35 or later, for the downgrade) needs no table rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("group_key", sa.String(512), nullable=False),
        sa.Column("opened_at", TIMESTAMP, nullable=False),
        sa.Column("last_change_at", TIMESTAMP, nullable=False),
        sa.Column("closes_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_group_key_closes_at", "incidents", ["group_key", "closes_at"])
    op.add_column("events", sa.Column("incident_id", BIG_ID, nullable=True))
    op.create_index("ix_events_incident_id", "events", ["incident_id"])
    op.add_column("outbox", sa.Column("incident_id", BIG_ID, nullable=True))
    op.add_column("outbox", sa.Column("part", sa.String(16), nullable=True))
    op.add_column("outbox", sa.Column("covers", BIG_ID, nullable=True))
    op.create_index("ix_outbox_incident_id_channel", "outbox", ["incident_id", "channel"])


def downgrade() -> None:
    op.drop_index("ix_outbox_incident_id_channel", table_name="outbox")
    op.drop_column("outbox", "covers")
    op.drop_column("outbox", "part")
    op.drop_column("outbox", "incident_id")
    op.drop_index("ix_events_incident_id", table_name="events")
    op.drop_column("events", "incident_id")
    op.drop_index("ix_incidents_group_key_closes_at", table_name="incidents")
    op.drop_table("incidents")
