"""Table rows <-> models, and the store's one rule about time, shared by its query modules
(``repo``, ``outbox``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from watchdog import models

# A row as read (``.mappings()``), or one rebuilt from a join's labelled columns.
Row = sa.RowMapping | Mapping[str, Any]


def require_aware(when: dt.datetime) -> None:
    """Raise ValueError for a naive datetime: the store takes timezone-aware ones only."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when!r}: the store takes timezone-aware datetimes")


def record(row: Row) -> models.TagRecord:
    """The tag record in a ``tags`` row."""
    return models.TagRecord(
        repository=row["repository"],
        tag=row["tag"],
        recorded_digest=row["recorded_digest"],
        current_digest=row["current_digest"],
        media_type=row["media_type"],
        state=models.TagState(row["state"]),
        first_seen=row["first_seen"],
        last_checked=row["last_checked"],
        last_changed=row["last_changed"],
        missing_count=row["missing_count"],
    )


def record_row(record: models.TagRecord) -> dict[str, Any]:
    """The ``tags`` row of ``record`` (without its id)."""
    return {
        "repository": record.repository,
        "tag": record.tag,
        "recorded_digest": record.recorded_digest,
        "current_digest": record.current_digest,
        "media_type": record.media_type,
        "state": record.state.value,
        "missing_count": record.missing_count,
        "first_seen": record.first_seen,
        "last_checked": record.last_checked,
        "last_changed": record.last_changed,
    }


def event(row: Row) -> models.Event:
    """The event in an ``events`` row."""
    return models.Event(
        id=row["id"],
        repository=row["repository"],
        tag=row["tag"],
        kind=models.EventKind(row["kind"]),
        at=row["at"],
        old_digest=row["old_digest"],
        new_digest=row["new_digest"],
        detail=dict(row["detail"] or {}),
        actor=row["actor"],
        incident_id=row.get("incident_id"),
    )


def event_row(event: models.Event) -> dict[str, Any]:
    """The ``events`` row of ``event`` (without its id: the database gives it)."""
    return {
        "repository": event.repository,
        "tag": event.tag,
        "kind": event.kind.value,
        "at": event.at,
        "old_digest": event.old_digest,
        "new_digest": event.new_digest,
        "detail": event.detail,
        "actor": event.actor,
        "incident_id": event.incident_id,
    }


def manifest_row(repository: str, manifest: models.Manifest, now: dt.datetime) -> dict[str, Any]:
    """The ``manifests`` row archiving ``manifest`` of ``repository`` at ``now``."""
    return {
        "repository": repository,
        "digest": manifest.digest,
        "media_type": manifest.media_type,
        "body": manifest.body,
        "archived_at": now,
    }
