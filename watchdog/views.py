"""How records, events, restore plans and check results are shown: the JSON shapes, one
definition for the CLI's ``--json`` and the HTTP API (so that scripts see the same fields from
both), and the lines ``scan`` prints for a person."""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from watchdog import models

if TYPE_CHECKING:  # types only: status and history need no registry client (httpx) at all
    from watchdog import restore, service


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
        # recoverable from the vault: where, and what it brings back
        "vault": plan.vault or None,
        "blobs_from_vault": list(plan.blobs_from_vault),
        "children_from_vault": list(plan.children_from_vault),
    }


def check_json(r: service.CheckResult) -> dict[str, Any]:
    """One watch's part of ``scan --json``."""
    return {
        "repository": r.repository,
        "registry": r.registry,
        "tags_checked": r.tags_checked,
        "error": r.error,
        "tag_errors": r.tag_errors,
        "events": [event_json(e) for e in r.events],
        "drifted": [record_json(t) for t in r.drifted],
        "seconds": round(r.seconds, 3),
    }


def check_lines(r: service.CheckResult) -> list[str]:
    """What ``scan`` prints for one watch: a summary line, then one line per event (first
    sightings aside), per tag that could not be checked and per drifted tag."""
    if r.error:
        return [f"{r.repository}: could not check: {r.error}"]
    counts: dict[str, int] = {}
    for e in r.events:
        counts[e.kind.value] = counts.get(e.kind.value, 0) + 1
    parts = [f"{r.tags_checked} tags checked"] + [f"{n} {k}" for k, n in sorted(counts.items())]
    if r.tag_errors:
        parts.append(f"{len(r.tag_errors)} could not be checked")
    lines = [f"{r.repository}: " + ", ".join(parts)]
    lines += ["  " + event_line(e) for e in r.events if e.kind is not models.EventKind.FIRST_SEEN]
    lines += [
        f"  ERROR     {r.repository}:{tag}: {err}" for tag, err in sorted(r.tag_errors.items())
    ]
    lines += [
        f"  DRIFT     {t.ref} is {t.state.value} (recorded {t.recorded_digest})" for t in r.drifted
    ]
    return lines


def event_line(e: models.Event) -> str:
    """One event on one line: kind, tag, digests and the platforms that changed."""
    ref = f"{e.repository}:{e.tag}"
    kind = e.kind.value.upper()
    if e.old_digest and e.new_digest:
        text = f"{kind:<9} {ref} {e.old_digest} -> {e.new_digest}"
    elif e.new_digest:
        text = f"{kind:<9} {ref} {e.new_digest}"
    else:
        text = f"{kind:<9} {ref} (was {e.old_digest})"
    platforms = e.detail.get("changed_platforms")
    if platforms:
        text += f" [changed: {', '.join(platforms)}]"
    return text


def event_by(e: models.Event) -> str:
    """Who did what ``e`` records, for a table: the account a registry notification named as
    the pusher of a move or deletion (``pushed:ci-bot``), else the event's actor."""
    pushed = e.detail.get("pushed_by")
    if isinstance(pushed, dict) and (pushed.get("actor") or pushed.get("address")):
        return f"pushed:{pushed.get('actor') or pushed.get('address')}"
    return e.actor


def write_scan_json(
    out: IO[str], code: int, *, drift: bool, complete: bool, watches: IO[str]
) -> None:
    """Write ``scan --json``'s ``{"exit_code", "drift", "complete", "watches"}`` to ``out``, byte
    for byte as ``json.dumps(..., indent=2)`` of the whole would, the "watches" items copied from
    ``watches``: a file holding each item's JSON (``indent=2``), each after a newline, separated
    by commas (so the items never have to be in memory together)."""
    head = json.dumps({"exit_code": code, "drift": drift, "complete": complete}, indent=2)
    out.write(head.removesuffix("\n}") + ',\n  "watches": [')
    watches.seek(0)
    first = watches.readline()  # "\n" before the first item; "" when there is none
    if not first:
        out.write("]\n}\n")
        return
    out.write(first)
    for line in watches:  # JSON strings hold no raw newline: every line is the item's own
        out.write("    " + line)
    out.write("\n  ]\n}\n")
