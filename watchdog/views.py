"""How records, events, incidents, restore plans and check results are shown: the JSON shapes,
one definition for the CLI's ``--json`` and the HTTP API (so that scripts see the same fields
from both), and the lines ``scan`` and ``incidents`` print for a person."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

from watchdog import models, terminal

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
        "incident": e.incident_id,
    }


def plan_json(plan: restore.Plan) -> dict[str, Any]:
    """A restore plan: what was found (``blobs``: a count per state, every state named) and
    ``verdict``, the line ``restore --dry-run`` prints under the reference."""
    return {
        "ref": f"{plan.repository}:{plan.tag}",
        "digest": plan.digest,
        "current_digest": plan.current_digest,
        "ok": plan.ok,
        "nothing_to_do": plan.nothing_to_do,
        "verdict": plan.verdict(),
        "source": plan.source,
        "media_type": plan.manifest.media_type if plan.manifest is not None else None,
        "children_present": list(plan.children_present),
        "children_to_put": [c.digest for c in plan.children_to_put],
        "blobs": {"checked": len(plan.blobs), **plan.blob_counts()},
        "blobs_checked": list(plan.blobs_checked),
        "blobs_missing": [d for d, state in plan.blobs if state.value == "missing"],
        "problems": list(plan.problems),
        # recoverable from the vault: where, and what it brings back
        "vault": plan.vault or None,
        "blobs_from_vault": list(plan.blobs_from_vault),
        "children_from_vault": list(plan.children_from_vault),
    }


# What became of one tag of ``restore`` or ``accept`` (the "outcome" of its JSON), and the exit
# code each stands for: a command naming several tags exits with the worst (0 < 1 < 2 < 3).
PLANNED = "planned"  # dry run: the restore can be done
NOTHING_TO_DO = "nothing_to_do"  # the tag already answers its recorded digest (or was accepted)
CANNOT_RESTORE = "cannot_restore"  # dry run: something is gone for good
RESTORED = "restored"
FAILED = "failed"  # restore_failed recorded: gone for good, or the registry failed midway
COULD_NOT_COMPLETE = "could_not_complete"  # registry or database unreachable: nothing written
REFUSED = "refused"  # the record changed between the plan and the restore (someone was quicker)
ACCEPTED = "accepted"
EXIT_CODES = {  # in the order outcomes_summary counts them
    PLANNED: 0,
    RESTORED: 0,
    ACCEPTED: 0,
    NOTHING_TO_DO: 0,
    CANNOT_RESTORE: 3,
    FAILED: 3,
    REFUSED: 2,
    COULD_NOT_COMPLETE: 3,
}


class TagOutcome(Protocol):
    """What became of one tag (actions.TagResult)."""

    @property
    def ref(self) -> models.ImageRef: ...
    @property
    def outcome(self) -> str: ...
    @property
    def plan(self) -> restore.Plan | None: ...
    @property
    def event(self) -> models.Event | None: ...
    @property
    def reason(self) -> str | None: ...


def worst_exit_code(results: Sequence[TagOutcome]) -> int:
    return max((EXIT_CODES[r.outcome] for r in results), default=0)


def tag_outcome_json(r: TagOutcome, *, dry_run: bool | None) -> dict[str, Any]:
    """One tag's part of ``restore``/``accept --json``; with one REF, the whole document.
    A dry run: the plan's fields (``plan_json``); else the event written (or null) and, for a
    restore (``dry_run`` False; None is an accept), the plan (or null)."""
    head: dict[str, Any] = {"exit_code": EXIT_CODES[r.outcome]}
    if dry_run:
        head["dry_run"] = True
    head["outcome"] = r.outcome
    if dry_run and r.plan is not None:
        return {**head, **plan_json(r.plan), "reason": r.reason}
    out = {**head, "ref": f"{r.ref.name}:{r.ref.tag}", "reason": r.reason}
    if not dry_run:
        out["event"] = event_json(r.event) if r.event is not None else None
    if dry_run is False:
        out["plan"] = plan_json(r.plan) if r.plan is not None else None
    return out


def tag_outcome_line(r: TagOutcome) -> str:
    """One tag's result on one line, for a person."""
    ref = f"{r.ref.name}:{r.ref.tag}"
    digest = r.event.new_digest if r.event is not None else None
    if r.outcome == RESTORED:
        return f"restored {ref} to {digest}"
    if r.outcome == ACCEPTED:
        assert r.event is not None
        return (
            f"accepted {ref}: {r.event.new_digest} is the recorded digest now "
            f"(was {r.event.old_digest})"
        )
    if r.outcome == NOTHING_TO_DO:
        why = r.reason or (r.plan.verdict() if r.plan is not None else "")
        return f"nothing to do for {ref}: {why.removeprefix('nothing to do: ')}"
    if r.outcome == PLANNED and r.plan is not None:
        return f"would restore {ref} to {r.plan.digest}"
    if r.outcome == FAILED:
        left = "; the tag was left as it was" if r.plan is not None and not r.plan.ok else ""
        return f"restore of {ref} failed: {r.reason}{left}"
    if r.outcome == CANNOT_RESTORE:
        return f"{ref}: cannot restore: {r.reason}; nothing was changed"
    return f"{ref}: {r.reason}"  # refused, could not complete: the reason says which


def outcomes_summary(results: Sequence[TagOutcome], *, dry_run: bool) -> str:
    """``3 tags: 2 restored, 1 failed`` (counts in a fixed order)."""
    counts = {o: sum(1 for r in results if r.outcome == o) for o in EXIT_CODES}
    words = {
        PLANNED: "would be restored",
        CANNOT_RESTORE: "cannot be restored",
        COULD_NOT_COMPLETE: "could not complete",
        NOTHING_TO_DO: "nothing to do",
    }
    parts = [f"{n} {words.get(o, o.replace('_', ' '))}" for o, n in counts.items() if n]
    text = f"{len(results)} tags: " + ", ".join(parts)
    return text + ("; nothing was changed (dry run)" if dry_run else "")


def plans_text(results: Sequence[TagOutcome], *, several: bool) -> list[str]:
    """The plan of every tag (``Plan.describe``), a blank line after each when several."""
    lines: list[str] = []
    for r in results:
        lines += r.plan.describe() if r.plan is not None else [tag_outcome_line(r)]
        lines += [""] if several else []
    return lines


def outcomes_json(
    results: Sequence[TagOutcome], *, several: bool, dry_run: bool | None
) -> dict[str, Any]:
    """``restore``/``accept --json``: with one REF, that tag's document (``tag_outcome_json``),
    the shape a single restore always had; with several or ``--drifted``, ``{"exit_code": the
    worst, "dry_run" (restore only: ``dry_run`` not None), "results": [one document each]}``."""
    docs = [tag_outcome_json(r, dry_run=dry_run) for r in results]
    if not several and len(docs) == 1:
        return docs[0]
    head: dict[str, Any] = {"exit_code": worst_exit_code(results)}
    if dry_run is not None:
        head["dry_run"] = dry_run
    return {**head, "results": docs}


def outcomes_text(
    results: Sequence[TagOutcome], *, several: bool, dry_run: bool
) -> tuple[list[str], list[str]]:
    """The lines for stdout and for stderr after the plans (``plans_text``): with one REF, its
    result (a failure on stderr; a dry run's plan says it all); with several, one line per tag
    and a count; with none, nothing."""
    code = worst_exit_code(results)
    if not results:
        return [], []
    if not several:
        if dry_run:
            return [], []
        line = tag_outcome_line(results[0])
        return ([], [line]) if code else ([line], [])
    out = [] if dry_run else [tag_outcome_line(r) for r in results]
    out.append(outcomes_summary(results, dry_run=dry_run))
    return out, (["not every tag went well (see above)"] if code else [])


def check_json(r: service.CheckResult) -> dict[str, Any]:
    """One watch's part of ``scan --json``."""
    return {
        "repository": r.repository,
        "registry": r.registry,
        "tags_checked": r.tags_checked,
        "error": r.error,
        "tag_errors": r.tag_errors,
        "events": [event_json(e) for e in r.events],
        # "rechecked": false: drift known from the record, the registry not asked this time
        "drifted": [
            {**record_json(t), "rechecked": t.tag not in r.not_rechecked} for t in r.drifted
        ],
        "seconds": round(r.seconds, 3),
    }


def confirmed_drift(r: service.CheckResult) -> bool:
    """Whether this check found drift itself (what ``scan``'s exit code 1 says), not only the
    record's drift of tags it could not re-check."""
    return any(t.tag not in r.not_rechecked for t in r.drifted)


def check_lines(r: service.CheckResult) -> list[str]:
    """What ``scan`` prints for one watch: a summary line, then one line per event (first
    sightings aside), per tag that could not be checked and per drifted tag; what a registry
    said is shown escaped (terminal.safe), each line one line."""
    if r.error:
        return [terminal.safe(f"{r.repository}: could not check: {r.error}"), *_drift_lines(r)]
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
    return [terminal.safe(line) for line in lines] + _drift_lines(r)


def _drift_lines(r: service.CheckResult) -> list[str]:
    return [
        terminal.safe(
            f"  DRIFT     {t.ref} is {t.state.value} (recorded {t.recorded_digest})"
            + (" [from the record, not re-checked]" if t.tag in r.not_rechecked else "")
        )
        for t in r.drifted
    ]


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


# --- incidents -------------------------------------------------------------------------------

INCIDENTS_LISTED = 20  # `incidents` and GET /api/v1/incidents without a limit


def no_incident(incident_id: object) -> str:
    """What ``incidents ID`` says (exit 2) and the API answers (404) for an unknown id."""
    return f"no incident {incident_id} recorded (`tag-watchdog incidents` lists them)"


def _pusher(e: models.Event) -> str | None:
    pushed = e.detail.get("pushed_by")
    if isinstance(pushed, dict) and isinstance(pushed.get("actor"), str) and pushed["actor"]:
        return str(pushed["actor"])
    return None


def incident_pushers(incident: models.Incident) -> list[str]:
    """Who pushed the incident's changes, as registry notifications named them (distinct, in
    the order first seen); empty when no notification said (the pusher is unknown)."""
    changes = (e for e in incident.events if e.kind in models.INCIDENT_CHANGES)
    return list(dict.fromkeys(p for e in changes if (p := _pusher(e)) is not None))


def incident_counts(incident: models.Incident) -> dict[str, int]:
    """How many of its tags each kind of change (moved, deleted, broken) left, by the latest
    change of each tag: ``{"moved": 6}``."""
    counts: dict[str, int] = {}
    for e in incident.changes_by_tag().values():
        counts[e.kind.value] = counts.get(e.kind.value, 0) + 1
    return counts


def incident_tag_json(incident: models.Incident, key: tuple[str, str]) -> dict[str, Any]:
    """One tag of an incident: its change (the latest; ``old_digest`` from its first change in
    the incident, ``new_digest`` from its latest), the platforms its moves changed, and where
    it stands now in the incident (``state``: its latest event's kind, by ``actor``)."""
    repository, tag = key
    events = [e for e in incident.events if (e.repository, e.tag) == key]
    changes = [e for e in events if e.kind in models.INCIDENT_CHANGES]
    first = changes[0] if changes else events[0]
    change = changes[-1] if changes else events[0]
    latest = events[-1]
    platforms: dict[str, None] = {}
    for e in changes:
        platforms.update(dict.fromkeys(e.detail.get("changed_platforms") or ()))
    pushed = change.detail.get("pushed_by")
    return {
        "ref": f"{repository}:{tag}",
        "repository": repository,
        "tag": tag,
        "change": change.kind.value,
        "at": iso(change.at),
        "old_digest": first.old_digest or first.detail.get("recorded_digest"),
        "new_digest": change.new_digest,
        "changed_platforms": sorted(platforms),
        "state": latest.kind.value,
        "actor": latest.actor,
        "pushed_by": pushed if isinstance(pushed, dict) else None,
    }


def incident_json(incident: models.Incident, now: Any, *, events: bool = False) -> dict[str, Any]:
    """An incident, for ``incidents --json`` and ``GET /api/v1/incidents``: open or closed at
    ``now``, its tags (``incident_tag_json``) in the order they joined, the kinds counted and
    who pushed; with ``events`` (one incident: ``incidents ID``) every event of it too."""
    out: dict[str, Any] = {
        "id": incident.id,
        "group_key": incident.group_key,
        "registry": incident.group_key.partition("/")[0],
        "opened_at": iso(incident.opened_at),
        "last_change_at": iso(incident.last_change_at),
        "closes_at": iso(incident.closes_at),
        "open": incident.is_open(now),
        "tag_count": len(incident.latest_by_tag()),
        "counts": incident_counts(incident),
        "pushed_by": incident_pushers(incident),
        "tags": [incident_tag_json(incident, key) for key in incident.latest_by_tag()],
    }
    if events:
        out["events"] = [event_json(e) for e in incident.events]
    return out


def _stamp(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def incident_head(incident: models.Incident, now: Any) -> list[str]:
    """The first two lines of an incident for a person: id, key, when it opened and closes (or
    closed); how many tags, the kinds counted and who pushed."""
    until = "open until" if incident.is_open(now) else "closed"
    counts = ", ".join(f"{n} {kind}" for kind, n in incident_counts(incident).items())
    tags = len(incident.latest_by_tag())
    pushers = ", ".join(incident_pushers(incident)) or "unknown"
    return [
        terminal.safe(
            f"incident {incident.id}  {incident.group_key}  opened {_stamp(incident.opened_at)}, "
            f"{until} {_stamp(incident.closes_at)}"
        ),
        terminal.safe(f"  {tags} tag{'' if tags == 1 else 's'}: {counts}; pushed by {pushers}"),
    ]


def incidents_text(incidents: Sequence[models.Incident], now: Any) -> list[str]:
    """``incidents``: each incident's head, then each tag and where it stands now in the
    incident (its latest event: moved, restored, accepted, ...); a blank line between two."""
    lines: list[str] = []
    for incident in incidents:
        lines += [""] if lines else []
        lines += incident_head(incident, now)
        latest = incident.latest_by_tag()
        rows = [(f"{r}:{t}", e.kind.value) for (r, t), e in latest.items()]
        lines += ["    " + line for line in table_lines((), rows)]
    return lines


def incident_text(incident: models.Incident, now: Any) -> list[str]:
    """``incidents ID``: the head, then a table of every tag: its change, old -> new digest,
    the platforms changed, where it stands now, by whom, and who pushed."""
    rows = []
    for key in incident.latest_by_tag():
        t = incident_tag_json(incident, key)
        pushed = t["pushed_by"] or {}
        rows.append(
            (
                t["ref"],
                t["change"],
                models.short_digest(t["old_digest"]) if t["old_digest"] else "-",
                models.short_digest(t["new_digest"]) if t["new_digest"] else "-",
                ", ".join(t["changed_platforms"]),
                t["state"],
                t["actor"],
                pushed.get("actor") or pushed.get("address") or "unknown",
            )
        )
    header = ("TAG", "CHANGE", "OLD", "NEW", "PLATFORMS", "NOW", "BY", "PUSHED BY")
    return [*incident_head(incident, now), "", *table_lines(header, rows)]


def table_lines(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` (under ``header``, when given) as lines of left-aligned columns, every value
    shown escaped (``terminal.safe``: reasons, actors and tags come from outside)."""
    shown = [
        [terminal.safe(str(v)) for v in row] for row in ([header] if header else []) + list(rows)
    ]
    if not shown:
        return []
    widths = [max(len(row[i]) for row in shown) for i in range(len(shown[0]))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in shown
    ]
