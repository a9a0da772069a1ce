"""The JSON shapes of records, events and restore plans: one definition for the CLI's ``--json``
and the HTTP API, so that scripts see the same fields from both."""

from __future__ import annotations

from typing import Any

from watchdog import models, restore


def iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def record_json(t: models.TagRecord) -> dict[str, Any]:
    return {
        "repository": t.repository,
        "tag": t.tag,
        "ref": t.ref,
        "state": t.state.value,
        "recorded_digest": t.recorded_digest,
        "current_digest": t.current_digest,
        "media_type": t.media_type,
        "first_seen": iso(t.first_seen),
        "last_checked": iso(t.last_checked),
        "last_changed": iso(t.last_changed),
    }


def event_json(e: models.Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "repository": e.repository,
        "tag": e.tag,
        "kind": e.kind.value,
        "at": iso(e.at),
        "old_digest": e.old_digest,
        "new_digest": e.new_digest,
        "detail": e.detail,
        "actor": e.actor,
    }


def plan_json(plan: restore.Plan) -> dict[str, Any]:
    return {
        "ref": f"{plan.repository}:{plan.tag}",
        "digest": plan.digest,
        "current_digest": plan.current_digest,
        "source": plan.source,
        "media_type": plan.manifest.media_type if plan.manifest is not None else None,
        "children_present": list(plan.children_present),
        "children_to_put": [c.digest for c in plan.children_to_put],
        "blobs_checked": list(plan.blobs_checked),
        "problems": list(plan.problems),
    }
