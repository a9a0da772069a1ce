"""The initial schema: tags, events, the manifest archive and watches.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand and frozen: it spells out every column instead of importing
``watchdog.store.tables``, so that later changes to the tables need a migration of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY (its 64-bit rowid).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("recorded_digest", sa.String(135), nullable=False),
        sa.Column("current_digest", sa.String(135), nullable=True),
        sa.Column("media_type", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("missing_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_checked", TIMESTAMP, nullable=False),
        sa.Column("last_changed", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tags"),
        sa.UniqueConstraint("repository", "tag", name="uq_tags_repository_tag"),
        sa.CheckConstraint("state IN ('ok', 'drifted', 'deleted')", name="ck_tags_state"),
    )
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("old_digest", sa.String(135), nullable=True),
        sa.Column("new_digest", sa.String(135), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_repository_tag_id", "events", ["repository", "tag", "id"])
    op.create_table(
        "manifests",
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("digest", sa.String(135), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("archived_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("repository", "digest", name="pk_manifests"),
    )
    op.create_table(
        "watches",
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("last_attempt", TIMESTAMP, nullable=True),
        sa.Column("last_success", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("consecutive_errors", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("repository", name="pk_watches"),
    )


def downgrade() -> None:
    op.drop_table("watches")
    op.drop_table("manifests")
    op.drop_index("ix_events_repository_tag_id", table_name="events")
    op.drop_table("events")
    op.drop_table("tags")
