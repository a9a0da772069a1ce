"""The alert outbox: one row per (event, channel), written in the event's transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Written by hand and frozen, like 0001. A row without ``event_id`` carries a ``notice`` (an alert
about the watchdog itself, e.g. a registry unreachable for too long) instead of an event.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=True),
        sa.Column("notice", sa.JSON(), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("repository", sa.String(512), nullable=True),
        sa.Column("tag", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("next_try", TIMESTAMP, nullable=False),
        sa.Column("lease_until", TIMESTAMP, nullable=True),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("remote_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], name="fk_outbox_event_id_events"),
        sa.UniqueConstraint("event_id", "channel", name="uq_outbox_event_id_channel"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_outbox_status"),
    )
    op.create_index("ix_outbox_status_next_try", "outbox", ["status", "next_try"])
    op.create_index("ix_outbox_channel_repository_tag", "outbox", ["channel", "repository", "tag"])


def downgrade() -> None:
    op.drop_index("ix_outbox_channel_repository_tag", table_name="outbox")
    op.drop_index("ix_outbox_status_next_try", table_name="outbox")
    op.drop_table("outbox")
