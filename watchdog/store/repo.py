"""The tag records, the event log, the manifest archive and the watch status, behind one class:
``Store``. The alert outbox's queries are ``store.outbox``'s (``Store.outbox``), and the rows
that the events of a write queue there are written in that write's own transaction.

Synchronous SQLAlchemy Core; the service calls it from worker threads (``asyncio.to_thread``), and
one ``Store`` may be shared by many threads (the engine's pool gives each call its own connection).
Each public method is one transaction and raises only ``errors.StoreError`` (and
``errors.ProtocolError`` for manifest bytes that do not match their digest).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from watchdog import errors, models
from watchdog.store import db, incidents, outbox, pushes, rows, tables, vault

# Long enough for a registry's error and our context; the full story is in the logs.
MAX_WATCH_ERROR = 1000
# digests per "which are archived?" query: well under both backends' parameter limits
ARCHIVED_QUERY_BATCH = 500

T = tables.tags
E = tables.events
M = tables.manifests
W = tables.watches


@dataclasses.dataclass(frozen=True)
class WatchStatus:
    """How the checks of one watched repository have been going."""

    repository: str
    last_attempt: dt.datetime | None
    last_success: dt.datetime | None
    last_error: str | None
    consecutive_errors: int


class Store:
    """The tag records, the event log, the manifest archive and the watch status of one database;
    ``outbox``: its alert outbox (``store.outbox.Outbox``)."""

    def __init__(
        self,
        engine: Engine,
        *,
        channels: Sequence[str] = (),
        vaulted: Collection[str] = (),
        grouping: models.Grouping | None = None,
    ) -> None:
        """``channels``: the configured alert channels (e.g. ``("slack",)``); every alerted event
        gets one outbox row per channel, in the event's own transaction. ``vaulted``: the
        repositories whose releases go to the vault (``store.vault``), queued the same way.
        ``grouping``: how changes are grouped into incidents (``store.incidents``; None: not
        at all, every alerted event gets rows of its own)."""
        self.engine = engine
        self.incidents = incidents.Incidents(engine, grouping)
        wait, every = (grouping.wait, grouping.update_interval) if grouping else (0.0, 0.0)
        self.outbox = outbox.Outbox(engine, channels=channels, wait=wait, update_interval=every)
        self.vault = vault.VaultQueue(engine, repositories=vaulted)
        self.pushes = pushes.Pushes(engine)
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise errors.StoreError(f"unsupported database {self._dialect!r}")

    # --- reads -----------------------------------------------------------------------------------

    def load_tags(self, repository: str) -> dict[str, models.TagRecord]:
        """Every recorded tag of ``repository`` (deleted ones included), by tag, in one SELECT."""
        return {r.tag: r for r in self.all_tags(repository)}

    def all_tags(self, repository: str | None = None) -> list[models.TagRecord]:
        """Every recorded tag, or those of ``repository``, ordered by repository then tag."""
        query = sa.select(T).order_by(T.c.repository, T.c.tag)
        if repository is not None:
            query = query.where(T.c.repository == repository)
        with db.translating(self.engine), self.engine.connect() as conn:
            return [rows.record(row) for row in conn.execute(query).mappings()]

    def get_tag(self, repository: str, tag: str) -> models.TagRecord | None:
        """The record of one tag, or None when it was never seen."""
        query = sa.select(T).where(T.c.repository == repository, T.c.tag == tag)
        with db.translating(self.engine), self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else rows.record(row)

    def history(self, repository: str, tag: str) -> list[models.Event]:
        """The events of one tag, oldest first (in the order they were written)."""
        query = sa.select(E).where(E.c.repository == repository, E.c.tag == tag).order_by(E.c.id)
        with db.translating(self.engine), self.engine.connect() as conn:
            return [rows.event(row) for row in conn.execute(query).mappings()]

    def last_events_of_drifted(self, repository: str) -> dict[str, models.Event]:
        """The latest event of every drifted tag of ``repository``, by tag, in one query.

        A drifted tag of an ``on_move: restore`` watch whose latest event is ``moved`` has a
        restore promised and not done: the daemon died before it wrote the outcome.
        """
        last = (
            sa.select(sa.func.max(E.c.id))
            .select_from(E.join(T, sa.and_(T.c.repository == E.c.repository, T.c.tag == E.c.tag)))
            .where(E.c.repository == repository, T.c.state == models.TagState.DRIFTED.value)
            .group_by(E.c.tag)
        )
        query = sa.select(E).where(E.c.id.in_(last))
        with db.translating(self.engine), self.engine.connect() as conn:
            return {e.tag: e for e in map(rows.event, conn.execute(query).mappings())}

    def get_manifest(self, repository: str, digest: str) -> models.Manifest | None:
        """The archived manifest ``digest`` of ``repository``, byte-identical to what was served.

        The bytes are verified again on the way out: a corrupted archive row raises StoreError
        rather than handing out bytes that are not the digest.
        """
        query = sa.select(M.c.media_type, M.c.body).where(
            M.c.repository == repository, M.c.digest == digest
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        body = bytes(row.body)
        if models.sha256_digest(body) != digest:
            raise errors.StoreError(
                f"archived manifest {repository}@{digest} is corrupt: its bytes hash to "
                f"{models.sha256_digest(body)}"
            )
        return models.Manifest(digest=digest, media_type=row.media_type, body=body)

    def archived_digests(self, repository: str, digests: Collection[str]) -> set[str]:
        """Which of ``digests`` the archive of ``repository`` holds (a few queries of at most
        ARCHIVED_QUERY_BATCH digests each, whatever the number asked about)."""
        wanted = sorted(set(digests))
        found: set[str] = set()
        with db.translating(self.engine), self.engine.connect() as conn:
            for start in range(0, len(wanted), ARCHIVED_QUERY_BATCH):
                batch = wanted[start : start + ARCHIVED_QUERY_BATCH]
                query = sa.select(M.c.digest).where(
                    M.c.repository == repository, M.c.digest.in_(batch)
                )
                found.update(conn.execute(query).scalars())
        return found

    def watch_status(self) -> list[WatchStatus]:
        """The check status of every repository that was ever checked, ordered by repository."""
        query = sa.select(W).order_by(W.c.repository)
        with db.translating(self.engine), self.engine.connect() as conn:
            return [
                WatchStatus(
                    repository=row.repository,
                    last_attempt=row.last_attempt,
                    last_success=row.last_success,
                    last_error=row.last_error,
                    consecutive_errors=row.consecutive_errors,
                )
                for row in conn.execute(query)
            ]

    def ping(self) -> None:
        """Return when the database answers a query; raise DatabaseUnavailable otherwise."""
        with db.translating(self.engine), self.engine.connect() as conn:
            conn.execute(sa.select(sa.literal(1))).scalar_one()

    # --- writes ----------------------------------------------------------------------------------

    def apply_check(
        self,
        repository: str,
        now: dt.datetime,
        changes: Sequence[models.Change],
        *,
        skip_touch: Collection[str] = (),
        manifests: Sequence[models.Manifest] = (),
        error: str | None = None,
    ) -> list[models.Event]:
        """Persist one check of ``repository`` atomically: all of it or nothing.

        Upserts the record of every change that has one (keeping the stored ``first_seen`` of a
        tag already known: first sight happens once; of two records for one tag, the later one
        wins), appends every change's event in the order given, archives
        ``manifests`` (each verified first: ``errors.ProtocolError`` before anything is written if a
        body does not hash to its digest), sets ``last_checked = now`` on every other tag of the
        repository except those in ``skip_touch`` (one statement, whatever the number of tags),
        and marks the watch successful, or, with ``error`` (some tags could not be checked), counts
        one more consecutive error as ``record_watch_error`` does. Returns the events with their ids.

        The number of statements depends on the number of changes and manifests, never on the
        number of unchanged tags.
        """
        rows.require_aware(now)
        for change in changes:
            _check_change(repository, change)
        for manifest in manifests:
            _verify(repository, manifest)
        # One row per tag, the last record given winning, as if they were written one by one: a
        # batched upsert that meets the same key twice is an error on PostgreSQL (ON CONFLICT DO
        # UPDATE cannot affect a row twice) or depends on the driver's row order.
        latest = {c.record.tag: c.record for c in changes if c.record is not None}
        records = list(latest.values())
        new_events = [c.event for c in changes if c.event is not None]
        untouched = sorted(latest.keys() | set(skip_touch))

        with db.writing(self.engine) as conn:
            if records:
                conn.execute(self._upsert_tags(), [rows.record_row(r) for r in records])
            saved = self._insert_events(conn, new_events)
            if manifests:
                conn.execute(
                    self._archive(), [rows.manifest_row(repository, m, now) for m in manifests]
                )
            conn.execute(self._touch(repository, now, untouched))
            if error is not None:
                conn.execute(self._watch_error(repository, now, error))
                return saved
            conn.execute(
                self._upsert_watch(
                    {
                        "repository": repository,
                        "last_attempt": now,
                        "last_success": now,
                        "last_error": None,
                        "consecutive_errors": 0,
                    },
                    ("last_attempt", "last_success", "last_error", "consecutive_errors"),
                )
            )
        return saved

    def archive_manifests(
        self, repository: str, manifests: Sequence[models.Manifest], now: dt.datetime
    ) -> None:
        """Archive ``manifests`` of ``repository`` in one small transaction of their own, each
        verified first (``errors.ProtocolError`` before anything is written if a body does not
        hash to its digest); a digest already archived keeps its row.

        A check streams an index's children (and the index) here as it fetches them, before the
        transaction that writes the tag's record: so a record never points to an archive missing
        a child, and a check holds a few manifests at a time, not the whole index. A crash in
        between leaves only verified manifests that no record names yet.
        """
        rows.require_aware(now)
        for manifest in manifests:
            _verify(repository, manifest)
        if not manifests:
            return
        with db.writing(self.engine) as conn:
            conn.execute(
                self._archive(), [rows.manifest_row(repository, m, now) for m in manifests]
            )

    def apply_changes(
        self, repository: str, now: dt.datetime, changes: Sequence[models.Change]
    ) -> list[models.Event]:
        """Persist changes made outside a check (restore, accept) atomically: all or nothing.

        Upserts every change's record (as ``apply_check`` does, ``first_seen`` kept) and appends
        every event in the order given; tags not named and the watch status are left alone.
        Returns the events with their ids.
        """
        rows.require_aware(now)
        for change in changes:
            _check_change(repository, change)
        latest = {c.record.tag: c.record for c in changes if c.record is not None}
        new_events = [c.event for c in changes if c.event is not None]
        with db.writing(self.engine) as conn:
            if latest:
                conn.execute(self._upsert_tags(), [rows.record_row(r) for r in latest.values()])
            return self._insert_events(conn, new_events)

    def count_events(
        self,
        repository: str,
        tag: str,
        kinds: Collection[models.EventKind],
        since: dt.datetime,
    ) -> int:
        """How many events of ``kinds`` the tag has at or after ``since``."""
        rows.require_aware(since)
        query = (
            sa.select(sa.func.count())
            .select_from(E)
            .where(
                E.c.repository == repository,
                E.c.tag == tag,
                E.c.kind.in_([k.value for k in kinds]),
                E.c.at >= since,
            )
        )
        with db.translating(self.engine), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def record_watch_error(self, repository: str, now: dt.datetime, error: str) -> None:
        """Note a failed (or partly failed) check of ``repository``: last attempt, the error (one
        line, truncated) and one more consecutive error. Tag records are left as they were."""
        rows.require_aware(now)
        with db.writing(self.engine) as conn:
            conn.execute(self._watch_error(repository, now, error))

    # --- statements ------------------------------------------------------------------------------

    def _insert_events(
        self, conn: sa.Connection, events: Sequence[models.Event]
    ) -> list[models.Event]:
        """Append ``events`` inside the caller's transaction; return them with their ids.

        Every event of every write goes through here, so whatever must happen in the same
        transaction as an event (its incident, the alerts outbox, the vault) has one place to
        hook in.
        """
        if not events:
            return []
        events = self.incidents.assign(conn, events)
        # Multi-row INSERT ... RETURNING, ids in parameter order (SQLAlchemy's
        # "insertmanyvalues"): one round trip per batch instead of one per event.
        ids = conn.execute(
            sa.insert(E).returning(E.c.id, sort_by_parameter_order=True),
            [rows.event_row(e) for e in events],
        ).scalars()
        saved = [dataclasses.replace(e, id=i) for e, i in zip(events, ids, strict=True)]
        self.outbox.queue_events(conn, saved)
        self.vault.queue_events(conn, saved)
        return saved

    def _insert(self, table: sa.Table) -> Any:
        # Both dialects spell upserts the same way (ON CONFLICT), through different Insert classes.
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _on_conflict_update(self, stmt: Any, keys: list[str], set_: Mapping[str, Any]) -> Any:
        return stmt.on_conflict_do_update(index_elements=keys, set_=dict(set_))

    def _watch_error(self, repository: str, now: dt.datetime, error: str) -> Any:
        values = {
            "repository": repository,
            "last_attempt": now,
            "last_success": None,
            "last_error": errors.truncate(error, MAX_WATCH_ERROR),
            "consecutive_errors": 1,
        }
        stmt = self._insert(W).values(values)
        return self._on_conflict_update(
            stmt,
            ["repository"],
            {
                "last_attempt": stmt.excluded.last_attempt,
                "last_error": stmt.excluded.last_error,
                "consecutive_errors": W.c.consecutive_errors + 1,
            },
        )

    def _upsert_tags(self) -> Any:
        stmt = self._insert(T)
        updated = {
            c.name: stmt.excluded[c.name]
            for c in T.columns
            if c.name not in ("id", "repository", "tag", "first_seen")
        }
        return self._on_conflict_update(stmt, ["repository", "tag"], updated)

    def _archive(self) -> Any:
        # The digest is verified, so an existing row holds the same bytes: keep the first.
        return self._insert(M).on_conflict_do_nothing(index_elements=["repository", "digest"])

    def _upsert_watch(self, values: dict[str, Any], update: Sequence[str]) -> Any:
        stmt = self._insert(W).values(values)
        return self._on_conflict_update(
            stmt, ["repository"], {name: stmt.excluded[name] for name in update}
        )

    def _touch(self, repository: str, now: dt.datetime, untouched: Sequence[str]) -> sa.Update:
        """``UPDATE tags SET last_checked = now`` for the repository's tags not in ``untouched``.

        ``untouched`` travels as ONE parameter (a PostgreSQL array, a JSON array for SQLite): an
        IN list would make the statement text and its parameter count grow with the tags, and
        100,000 tags would exceed both backends' parameter limits.
        """
        stmt = sa.update(T).where(T.c.repository == repository).values(last_checked=now)
        if not untouched:
            return stmt
        if self._dialect == "postgresql":
            array = sa.bindparam(
                "untouched", list(untouched), type_=postgresql.ARRAY(sa.String(tables.TAG))
            )
            return stmt.where(T.c.tag != sa.all_(array))
        listed = sa.func.json_each(
            sa.bindparam("untouched", json.dumps(list(untouched)), type_=sa.Text)
        ).table_valued("value")
        return stmt.where(T.c.tag.not_in(sa.select(listed.c.value)))


# --- checks before anything is written ---------------------------------------------------------


def _check_change(repository: str, change: models.Change) -> None:
    # A programming error, not a database one: a row written under the wrong key would be a
    # silently wrong record, so refuse the whole check before anything is written.
    key = (change.repository, change.tag)
    if change.repository != repository:
        raise ValueError(f"change for {change.repository} in a check of {repository}")
    for part in (change.record, change.event):
        if part is not None and (part.repository, part.tag) != key:
            raise ValueError(
                f"change for {key[0]}:{key[1]} carries a {type(part).__name__} of "
                f"{part.repository}:{part.tag}"
            )


def _verify(repository: str, manifest: models.Manifest) -> None:
    actual = models.sha256_digest(manifest.body)
    if actual != manifest.digest:
        raise errors.ProtocolError(
            f"refusing to archive {repository}@{errors.truncate(manifest.digest, 80)}: "
            f"its bytes hash to {actual}"
        )
