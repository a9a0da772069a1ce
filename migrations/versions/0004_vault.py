"""The vault's durable state: one row per release copy (repository, tag, digest).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Written by hand and frozen, like 0001 to 0003. ``vault_copies`` holds, for every (repository,
tag, digest) that was first seen, accepted or restored on a vaulted watch, whether its complete
copy is ``pending``, ``kept`` (the vault's tag answered the digest) or ``failed`` (with the
reason), when, and where (the vault repository and tag). Rows are inserted in the transaction of
the event that asked for the copy, so a crash cannot lose one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vault_copies",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("repository", sa.String(512), nullable=False),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(135), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("next_try", TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("vault_repository", sa.String(512), nullable=True),
        sa.Column("vault_tag", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vault_copies"),
        sa.UniqueConstraint(
            "repository", "tag", "digest", name="uq_vault_copies_repository_tag_digest"
        ),
        sa.CheckConstraint("state IN ('pending', 'kept', 'failed')", name="ck_vault_copies_state"),
    )
    op.create_index("ix_vault_copies_state_next_try", "vault_copies", ["state", "next_try"])


def downgrade() -> None:
    op.drop_index("ix_vault_copies_state_next_try", table_name="vault_copies")
    op.drop_table("vault_copies")
