"""Restore all / Accept all: the incident buttons of ``/slack/actions`` (``web.slack``).

A tap acts on what its message showed, nothing newer: the tags of the incident's changes up to
the highest event id the message showed (``shown``), each to the digest the message showed for
it, through the same ``actions.Actions`` calls (and the same "still recorded" / "still answers"
conditions) as a tag's own button. A tag someone else put back meanwhile is counted as already
done; one whose record changed is refused and left alone.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

from watchdog import actions, errors, models
from watchdog.alerts import incident as incident_view
from watchdog.alerts import render
from watchdog.store import repo as store_repo

ACTIONS = (incident_view.ACTION_RESTORE_ALL, incident_view.ACTION_ACCEPT_ALL)


@dataclasses.dataclass(frozen=True)
class IncidentTap:
    """A tap on Restore all or Accept all, as Slack reported it (after the signature check)."""

    action: str  # incident_view.ACTION_RESTORE_ALL | ACTION_ACCEPT_ALL
    user: str
    user_name: str
    incident_id: int
    seen: int  # the highest event id the tapped message showed
    channel: str | None
    message_ts: str | None

    @property
    def actor(self) -> str:
        return f"slack:{self.user}" + (f" ({self.user_name})" if self.user_name else "")

    @property
    def verb(self) -> str:
        return "restore_all" if self.action == incident_view.ACTION_RESTORE_ALL else "accept_all"

    @property
    def shown(self) -> str:
        """What the tap is about, as a person reads it."""
        return f"incident {self.incident_id}"


def parse_value(value: Any) -> tuple[int, int]:
    """The incident id and the highest event id shown, from a Restore all / Accept all value.
    Raises ValueError when it is not one of ours."""
    if not isinstance(value, dict):
        raise ValueError("not an object")
    incident_id, shown = value.get("incident"), value.get("shown")
    if not isinstance(incident_id, int) or not isinstance(shown, int):
        raise ValueError("incident and shown must be integers")
    if incident_id < 1 or shown < 0:
        raise ValueError("incident and shown out of range")
    return incident_id, shown


def as_shown(incident: models.Incident, shown: int) -> models.Incident:
    """``incident`` as a message that showed events up to ``shown`` drew it."""
    return dataclasses.replace(
        incident, events=tuple(e for e in incident.events if (e.id or 0) <= shown)
    )


def targets(incident: models.Incident, action: str) -> list[tuple[models.ImageRef, str]]:
    """What a tap on ``action`` acts on in ``incident`` (as shown): each tag and the digest its
    message showed: the recorded digest to restore, or the new digest to accept."""
    out: list[tuple[models.ImageRef, str]] = []
    for change in incident_view.needs_restore(incident):
        if action == incident_view.ACTION_RESTORE_ALL:
            digest = render.recorded_digest(change)
        elif change.kind is models.EventKind.MOVED:
            digest = change.new_digest
        else:
            continue
        if digest:
            ref = models.ImageRef.parse(f"{change.repository}:{change.tag}", require_tag=True)
            out.append((ref, digest))
    return out


async def act(tap: IncidentTap, store: store_repo.Store, acts: actions.Actions) -> tuple[str, str]:
    """Carry out ``tap`` tag by tag; the metric's result label and the outcome (mrkdwn)."""
    incident = await asyncio.to_thread(store.incidents.get, tap.incident_id)
    if incident is None:
        return "refused", f"{render.actor_mrkdwn(tap.actor)}: {tap.shown} is not recorded."
    todo = targets(as_shown(incident, tap.seen), tap.action)
    if not todo:
        return "already", "Nothing left to do: every tag of this incident is settled."
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    for ref, digest in todo:
        shown = f"{ref.name}:{ref.tag}"
        try:
            if tap.action == incident_view.ACTION_RESTORE_ALL:
                done = await acts.restore(ref, digest, tap.actor, still_recorded=True)
                counts["restored" if done.restored else "failed"] += 1
                if not done.restored:
                    problems.append(f"{render.code(shown)}: {render.escape(done.reason or '?')}")
            else:
                await acts.accept(ref, "accepted from Slack (Accept all)", tap.actor, digest)
                counts["accepted"] += 1
        except actions.AlreadyDone:
            counts["already"] += 1
        except (errors.UsageError, errors.WatchdogError) as exc:
            counts["not done"] += 1
            problems.append(
                f"{render.code(shown)}: {render.escape(errors.truncate(str(exc), 200))}"
            )
    verb = "restored" if tap.action == incident_view.ACTION_RESTORE_ALL else "accepted"
    done_n = counts[verb]
    text = f"*{render.actor_mrkdwn(tap.actor)} {verb} {done_n} of {len(todo)} tags*"
    rest = [f"{n} {what}" for what, n in counts.items() if what != verb and n]
    if rest:
        text += " (" + ", ".join(rest) + ")"
    if problems:
        text += "\n" + "\n".join(problems[:10])
        if len(problems) > 10:
            text += f"\n…and {len(problems) - 10} more"
    result = verb if done_n == len(todo) else ("failed" if done_n == 0 else "partial")
    return result, text
