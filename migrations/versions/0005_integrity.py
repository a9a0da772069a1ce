"""Tag state ``broken``: the recorded digest answers, but a child manifest or blob is gone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Written by hand and frozen. Only the check constraint on ``tags.state`` changes (it gains
``broken``); SQLite rebuilds the table for that (batch mode), PostgreSQL alters it in place. The
downgrade refuses nothing: a ``broken`` tag goes back to ``ok`` (it still answers its recorded
digest; the next integrity check of a newer release finds it again).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_BROKEN = "state IN ('ok', 'drifted', 'deleted', 'broken')"
WITHOUT = "state IN ('ok', 'drifted', 'deleted')"


def _constraint(condition: str) -> None:
    with op.batch_alter_table("tags") as batch:
        batch.drop_constraint("ck_tags_state", type_="check")
        batch.create_check_constraint("ck_tags_state", sa.text(condition))


def upgrade() -> None:
    _constraint(WITH_BROKEN)


def downgrade() -> None:
    op.execute("UPDATE tags SET state = 'ok' WHERE state = 'broken'")
    _constraint(WITHOUT)
