"""The outbox remembers a send whose outcome is unknown, so that a crash cannot double an alert.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Written by hand and frozen, like 0001 and 0002. Three nullable columns on ``outbox``:

* ``sent_at``: when the earliest send of the row whose outcome is not known started (written and
  committed before the send; a crash, a timeout or a 5xx leave it set). A row re-sent with it set
  is first looked for in the Slack channel (bot mode).
* ``send_key``: a random key sent with the message as Slack message metadata, by which the lookup
  recognises it (the outbox id alone is not unique across two watchdogs posting to one channel).
* ``remote_channel``: the Slack channel id the message went to, as Slack answered (the configured
  ``slack.channel`` may be a name; reading the history needs the id).

Plain ``ADD``/``DROP COLUMN``: every column is nullable and in no index or constraint, so SQLite
(3.35 or later, for the downgrade) needs no table rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("outbox", sa.Column("sent_at", TIMESTAMP, nullable=True))
    op.add_column("outbox", sa.Column("send_key", sa.String(32), nullable=True))
    op.add_column("outbox", sa.Column("remote_channel", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox", "remote_channel")
    op.drop_column("outbox", "send_key")
    op.drop_column("outbox", "sent_at")
