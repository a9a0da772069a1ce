"""Who pushed, shared: registry notifications' pushers kept for the ledger window in the store.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Written by hand and frozen, like 0001 to 0006. ``pushes`` holds, for the ledger's window (ten
minutes), who pushed or deleted which tag or digest as a registry notification said, so that
the check that finds the change names the pusher whichever replica received the notification.
Rows are pruned as new ones come; they name accounts, addresses and clients, never secrets.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pushes",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("tag", sa.String(128), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(135), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("address", sa.String(200), nullable=True),
        sa.Column("user_agent", sa.String(200), nullable=True),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pushes"),
    )
    op.create_index("ix_pushes_repository_at", "pushes", ["repository", "at"])
    op.create_index("ix_pushes_at", "pushes", ["at"])


def downgrade() -> None:
    op.drop_index("ix_pushes_at", table_name="pushes")
    op.drop_index("ix_pushes_repository_at", table_name="pushes")
    op.drop_table("pushes")
