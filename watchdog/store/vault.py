"""The vault's durable state: which releases have a complete copy in the vault, which are still
to be copied, and which could not be (``tables.vault_copies``).

Rows are queued by ``repo.Store`` in the transaction of the event that asks for a copy (through
``VaultQueue.queue_events``): a ``first_seen``, ``accepted`` or ``restored`` event of a vaulted
repository. The copier (``watchdog.vaulting``) takes due rows, and records ``kept`` only after the
vault's tag answered the digest. Each public method but ``queue_events`` is one transaction and
raises only ``errors.StoreError``. A crash mid-copy leaves the row ``pending``: the next worker
copies it again (copies are idempotent: same digests, same bytes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from watchdog import errors, models
from watchdog.store import db, rows, tables

V = tables.vault_copies
T = tables.tags

# The events whose new digest becomes a trusted release digest: each is kept in the vault.
VAULTED_KINDS = frozenset(
    {models.EventKind.FIRST_SEEN, models.EventKind.ACCEPTED, models.EventKind.RESTORED}
)
MAX_REASON = 1000


@dataclasses.dataclass(frozen=True)
class Copy:
    """One release copy: ``repository`` (``ImageRef.name``), ``tag``, ``digest``, its ``state``
    (pending, kept, failed), when it last changed, and where it is (or was to be) kept:
    ``vault_repository`` is the vault repository's full name (``HOST[:PORT]/PATH``)."""

    id: int
    repository: str
    tag: str
    digest: str
    state: str
    created_at: dt.datetime
    updated_at: dt.datetime
    attempts: int = 0
    vault_repository: str | None = None
    vault_tag: str | None = None
    reason: str | None = None


class VaultQueue:
    """The vault copies of one database, for the vaulted ``repositories`` (``ImageRef.name``)."""

    def __init__(self, engine: Engine, *, repositories: Collection[str] = ()) -> None:
        self.engine = engine
        self.repositories = frozenset(repositories)

    # --- queueing --------------------------------------------------------------------------------

    def queue_events(self, conn: sa.Connection, events: Sequence[models.Event]) -> None:
        """Queue a copy for every event of ``events`` that makes a digest a trusted release digest
        of a vaulted repository, inside the caller's transaction ``conn``. A copy already queued
        or kept is left alone; a failed one is queued again (someone trusts the digest anew)."""
        queued = [
            _row(e.repository, e.tag, e.new_digest, e.at)
            for e in events
            if e.kind in VAULTED_KINDS and e.new_digest and e.repository in self.repositories
        ]
        if queued:
            conn.execute(self._upsert(conn), queued)

    def enqueue(self, repository: str, tag: str, digest: str, now: dt.datetime) -> None:
        """Queue a copy of ``repository:tag`` at ``digest`` (as ``queue_events`` does)."""
        rows.require_aware(now)
        models.check_digest(digest)
        with db.writing(self.engine) as conn:
            conn.execute(self._upsert(conn), [_row(repository, tag, digest, now)])

    def backfill(self, now: dt.datetime) -> int:
        """Queue a copy of the recorded digest of every tag of the vaulted repositories that has
        none yet (tags recorded before the vault was configured, deleted ones excepted); return
        how many were queued. One INSERT ... SELECT, whatever the number of tags."""
        rows.require_aware(now)
        if not self.repositories:
            return 0
        missing = sa.select(
            T.c.repository,
            T.c.tag,
            T.c.recorded_digest,
            sa.literal("pending"),
            sa.literal(now, tables.UTCDateTime()),
            sa.literal(now, tables.UTCDateTime()),
            sa.literal(now, tables.UTCDateTime()),
        ).where(
            T.c.repository.in_(sorted(self.repositories)),
            T.c.state != models.TagState.DELETED.value,
            ~sa.exists().where(
                V.c.repository == T.c.repository,
                V.c.tag == T.c.tag,
                V.c.digest == T.c.recorded_digest,
            ),
        )
        stmt = (
            sa.insert(V)
            .from_select(
                ["repository", "tag", "digest", "state", "created_at", "updated_at", "next_try"],
                missing,
            )
            .returning(V.c.id)
        )
        with db.writing(self.engine) as conn:
            return len(conn.execute(stmt).all())

    # --- the copier ------------------------------------------------------------------------------

    def due(self, now: dt.datetime, *, limit: int = 100) -> list[Copy]:
        """Up to ``limit`` pending copies whose next try is at or before ``now``, oldest first."""
        rows.require_aware(now)
        query = (
            sa.select(V)
            .where(V.c.state == "pending", V.c.next_try <= now)
            .order_by(V.c.id)
            .limit(limit)
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            return [_copy(r) for r in conn.execute(query).mappings()]

    def next_try(self) -> dt.datetime | None:
        """When the earliest pending copy is due (None: nothing pending)."""
        query = sa.select(sa.func.min(V.c.next_try)).where(V.c.state == "pending")
        with db.translating(self.engine), self.engine.connect() as conn:
            value = conn.execute(query).scalar_one_or_none()
        return tables.UTCDateTime().process_result_value(value, self.engine.dialect)

    def pending_count(self) -> int:
        query = sa.select(sa.func.count()).select_from(V).where(V.c.state == "pending")
        with db.translating(self.engine), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def mark_kept(
        self, copy_id: int, now: dt.datetime, vault_repository: str, vault_tag: str
    ) -> None:
        """Record that copy ``copy_id`` is kept at ``vault_repository:vault_tag`` (the caller saw
        that tag answer the digest). Committed before this returns."""
        self._finish(copy_id, now, "kept", vault_repository, vault_tag, None)

    def mark_failed(
        self,
        copy_id: int,
        now: dt.datetime,
        reason: str,
        vault_repository: str | None = None,
        vault_tag: str | None = None,
    ) -> None:
        """Record that copy ``copy_id`` could not be made, for good, and why."""
        self._finish(copy_id, now, "failed", vault_repository, vault_tag, reason)

    def retry_later(self, copy_id: int, now: dt.datetime, at: dt.datetime, reason: str) -> None:
        """Leave copy ``copy_id`` pending, to be tried again at ``at``; count the attempt and
        say why it did not succeed this time."""
        rows.require_aware(now)
        rows.require_aware(at)
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(V)
                .where(V.c.id == copy_id, V.c.state == "pending")
                .values(
                    next_try=at,
                    updated_at=now,
                    attempts=V.c.attempts + 1,
                    reason=errors.truncate(reason, MAX_REASON),
                )
            )

    # --- reads -----------------------------------------------------------------------------------

    def get(self, copy_id: int) -> Copy | None:
        with db.translating(self.engine), self.engine.connect() as conn:
            row = conn.execute(sa.select(V).where(V.c.id == copy_id)).mappings().first()
        return None if row is None else _copy(row)

    def copies(self, repository: str | None = None) -> dict[tuple[str, str, str], Copy]:
        """Every copy (or those of ``repository``), by (repository, tag, digest)."""
        query = sa.select(V).order_by(V.c.id)
        if repository is not None:
            query = query.where(V.c.repository == repository)
        with db.translating(self.engine), self.engine.connect() as conn:
            return {
                (c.repository, c.tag, c.digest): c
                for c in map(_copy, conn.execute(query).mappings())
            }

    def kept(self, repository: str, digest: str) -> list[Copy]:
        """The kept copies of ``digest`` of ``repository`` (any tag), newest first."""
        query = (
            sa.select(V)
            .where(V.c.repository == repository, V.c.digest == digest, V.c.state == "kept")
            .order_by(V.c.updated_at.desc(), V.c.id.desc())
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            return [_copy(r) for r in conn.execute(query).mappings()]

    # --- statements ------------------------------------------------------------------------------

    def _upsert(self, conn: sa.Connection) -> Any:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(V)
        return stmt.on_conflict_do_update(
            index_elements=["repository", "tag", "digest"],
            set_={
                "state": "pending",
                "attempts": 0,
                "reason": None,
                "next_try": stmt.excluded.next_try,
                "updated_at": stmt.excluded.updated_at,
            },
            where=V.c.state == "failed",
        )

    def _finish(
        self,
        copy_id: int,
        now: dt.datetime,
        state: str,
        vault_repository: str | None,
        vault_tag: str | None,
        reason: str | None,
    ) -> None:
        rows.require_aware(now)
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(V)
                .where(V.c.id == copy_id)
                .values(
                    state=state,
                    updated_at=now,
                    attempts=V.c.attempts + 1,
                    vault_repository=vault_repository,
                    vault_tag=vault_tag,
                    reason=errors.truncate(reason, MAX_REASON) if reason is not None else None,
                )
            )


def _row(repository: str, tag: str, digest: str | None, at: dt.datetime) -> dict[str, Any]:
    return {
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "state": "pending",
        "created_at": at,
        "updated_at": at,
        "next_try": at,
        "attempts": 0,
    }


def _copy(row: Any) -> Copy:
    return Copy(
        id=int(row["id"]),
        repository=row["repository"],
        tag=row["tag"],
        digest=row["digest"],
        state=row["state"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts=int(row["attempts"]),
        vault_repository=row["vault_repository"],
        vault_tag=row["vault_tag"],
        reason=row["reason"],
    )
