"""Slack messages about an incident: Block Kit rendering, pure.

An incident is the changes (moves, deletions, broken releases) of one grouping key found within
the window of each other, and what followed them (restores, accepts). It is one top-level
message (``render_incident``): every tag with its old and new digest, the platforms changed and
what became of it, who pushed, and Restore all / Accept all buttons beside each tag's own. An
incident of one tag is that tag's alert as ``render.render_event`` draws it. What joins after
the message went out is a thread reply (``render_news``) and the message is redrawn
(``chat.update``); with a webhook, one closing message when the window ends.

Block Kit limits hold whatever the number of tags: at most ``MAX_TAG_LINES`` tag lines (then
"and N more"), sections under 3,000 characters, at most 50 blocks, button values under 2,000.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from typing import Any

from watchdog import config, models
from watchdog.alerts import render

ACTION_RESTORE_ALL = "tag_watchdog.restore_all"
ACTION_ACCEPT_ALL = "tag_watchdog.accept_all"
ACTIONS_BLOCK = "tag_watchdog.incident"

MAX_TAG_LINES = 40  # tag lines in one message; the rest is "and N more"
MAX_TAG_BUTTONS = 8  # tags that get buttons of their own (two each; an actions block takes 25)
MAX_PUSHERS = 3

_STATES = {
    models.EventKind.MOVED: "moved",
    models.EventKind.DELETED: "deleted",
    models.EventKind.BROKEN: "broken",
    models.EventKind.RESTORED: "restored",
    models.EventKind.RESTORE_FAILED: "restore FAILED",
    models.EventKind.RESTORE_STOPPED: "auto-restore stopped",
    models.EventKind.ACCEPTED: "accepted",
    models.EventKind.REVERTED: "back at its record",
    models.EventKind.REAPPEARED: "reappeared",
}

# what still needs a person: the tag's latest event in the incident is one of these
_OPEN_KINDS = frozenset(
    {
        models.EventKind.MOVED,
        models.EventKind.DELETED,
        models.EventKind.BROKEN,
        models.EventKind.REAPPEARED,
        models.EventKind.RESTORE_FAILED,
        models.EventKind.RESTORE_STOPPED,
    }
)


# What an update says in a reply (or a webhook's closing message): every event but an accept,
# which a person did themselves (the redrawn message shows it), as a tag's alert never said it.
REPLIED = frozenset(
    k for k in models.EventKind if k not in (models.EventKind.FIRST_SEEN, models.EventKind.ACCEPTED)
)


def contexts(
    incident: models.Incident, settings: config.Settings, first_seen: dt.datetime | None = None
) -> dict[str, render.Context]:
    """The render context of each repository of ``incident`` (``first_seen``: when the tag of
    an incident of one tag was first recorded)."""
    return {
        repository: render.context_for(
            settings, repository, first_seen=first_seen, buttons=settings.slack.buttons
        )
        for repository in dict.fromkeys(e.repository for e in incident.events)
    }


def tag_count(incident: models.Incident) -> int:
    """How many tags changed in ``incident``."""
    return len(incident.changes_by_tag())


def is_single(incident: models.Incident) -> bool:
    """True for an incident of one tag: its message is that tag's alert (``render_event``)."""
    return tag_count(incident) <= 1


def covers(incident: models.Incident) -> int:
    """The highest event id a message drawn from ``incident`` now shows."""
    return max((e.id or 0 for e in incident.events), default=0)


def _ref(event: models.Event) -> str:
    return f"{event.repository}:{event.tag}"


def _title(incident: models.Incident) -> str:
    kinds = collections.Counter(e.kind for e in incident.changes_by_tag().values())
    n = sum(kinds.values())
    if len(kinds) == 1:
        verb = _STATES[next(iter(kinds))]
        return f"{n} release tags {verb} in {incident.group_key}"
    return f"{n} release tags changed in {incident.group_key}"


def _counts(incident: models.Incident) -> str:
    """ "4 moved, 2 deleted": the changes by kind."""
    kinds = collections.Counter(e.kind for e in incident.changes_by_tag().values())
    return ", ".join(f"{n} {_STATES[k]}" for k, n in sorted(kinds.items(), key=lambda i: -i[1]))


def pushers_mrkdwn(incident: models.Incident) -> str:
    """Who pushed (or deleted) the incident's changes, as registry notifications told; the
    tags found by polling alone are counted as unknown."""
    seen: dict[str, int] = {}
    unknown = 0
    for event in incident.changes_by_tag().values():
        if event.kind is models.EventKind.BROKEN:
            continue  # nobody pushed a broken release: parts went missing
        line = render.pushed_by_mrkdwn(event)
        who = event.detail.get("pushed_by")
        if line is None or not isinstance(who, dict) or not who:
            unknown += 1
            continue
        text = line.split(":* ", 1)[1]
        seen[text] = seen.get(text, 0) + 1
    parts = [f"{text} ({n} tag{'s' if n > 1 else ''})" for text, n in seen.items()]
    if len(parts) > MAX_PUSHERS:
        parts = [*parts[:MAX_PUSHERS], f"and {len(parts) - MAX_PUSHERS} more"]
    if unknown:
        parts.append(
            f"unknown for {unknown} tag{'s' if unknown > 1 else ''} (found by polling; registry "
            "notifications to `/hooks/registry` name the pusher)"
        )
    return "*Pushed by:* " + ("; ".join(parts) if parts else "nobody: parts went missing")


def _done_by(actor: str) -> str:
    """Who did it, after "by": the watchdog's own actions, or the person (a Slack mention)."""
    return "the watchdog" if actor in ("", "watchdog") else render.actor_mrkdwn(actor)


def _status(latest: models.Event) -> str:
    state = _STATES.get(latest.kind, latest.kind.value)
    if latest.kind in (models.EventKind.RESTORED, models.EventKind.ACCEPTED):
        return f"*{state}* by {_done_by(latest.actor)}"
    if latest.kind is models.EventKind.RESTORE_FAILED:
        reason = latest.detail.get("reason") or latest.detail.get("error") or "unknown reason"
        return f"*{state}*: {render.escape(render.truncate_mrkdwn(str(reason), 200))}"
    return f"*{state}*"


def now_mrkdwn(incident: models.Incident) -> str:
    """Where the incident's tags stand, counted: "6 restored (by <@U1>)", "4 moved, 2 restored".
    Drawn from the events, so every redraw says it (a tap's outcome text does not outlive the
    next redraw)."""
    latest = incident.latest_by_tag()
    counts = collections.Counter(e.kind for e in latest.values())
    parts = []
    for kind, n in counts.most_common():
        who = {e.actor for e in latest.values() if e.kind is kind}
        by = ""
        if kind in (models.EventKind.RESTORED, models.EventKind.ACCEPTED) and len(who) == 1:
            by = f" by {_done_by(who.pop())}"
        parts.append(f"{n} {_STATES.get(kind, kind.value)}{by}")
    left = len(needs_restore(incident))
    settled = "every tag settled" if not left else f"{left} to put back or accept"
    return f"{', '.join(parts)}: {settled}."


def tag_line(change: models.Event, latest: models.Event) -> str:
    """One tag of an incident in mrkdwn: its reference, old -> new digest, the platforms that
    changed, and what became of it (its latest event)."""
    old = models.short_digest(change.old_digest or "") or "?"
    if change.kind is models.EventKind.MOVED:
        digests = (
            f"{render.code(old)} → {render.code(models.short_digest(change.new_digest or ''))}"
        )
    elif change.kind is models.EventKind.DELETED:
        digests = f"was {render.code(old)}"
    else:
        digests = f"at {render.code(old)}, parts missing"
    line = f"• {render.code(_ref(change))} {digests}"
    platforms = change.detail.get("changed_platforms") or []
    if platforms:
        shown = ", ".join(render.escape(str(p)) for p in list(platforms)[:6])
        more = f" +{len(platforms) - 6}" if len(platforms) > 6 else ""
        line += f" ({shown}{more})"
    return f"{line}: {_status(latest)}"


def _tag_sections(incident: models.Incident) -> list[dict[str, Any]]:
    changes = incident.changes_by_tag()
    latest = incident.latest_by_tag()
    lines = [tag_line(change, latest[key]) for key, change in changes.items()]
    shown, rest = lines[:MAX_TAG_LINES], len(lines) - MAX_TAG_LINES
    if rest > 0:
        shown.append(f"…and {rest} more: `tag-watchdog incidents {incident.id}` lists every tag")
    return [render.section(chunk) for chunk in _chunks(shown, render.MAX_SECTION - 100)]


def _chunks(lines: list[str], limit: int) -> list[str]:
    out: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + 1 + len(line) > limit:
            out.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out


def needs_restore(incident: models.Incident) -> list[models.Event]:
    """The changes of the tags whose latest event in ``incident`` still wants a person (moved,
    deleted, broken, a failed or stopped restore), in the order tags came."""
    latest = incident.latest_by_tag()
    return [
        change
        for key, change in incident.changes_by_tag().items()
        if latest[key].kind in _OPEN_KINDS
    ]


def _restoring(incident: models.Incident, settings_context: dict[str, render.Context]) -> bool:
    """True when the watchdog puts back every change of ``incident`` on its own."""
    changes = list(incident.changes_by_tag().values())
    return bool(changes) and all(
        render.restoring(e, settings_context.get(e.repository, render.Context())) for e in changes
    )


def render_incident(
    incident: models.Incident,
    contexts: dict[str, render.Context],
    *,
    closing: bool = False,
    outcome: str | None = None,
) -> render.Message:
    """The message of ``incident`` as it stands (its first message, the message redrawn by
    ``chat.update``, or with ``closing`` a webhook's closing message). ``contexts``: the
    render context of each repository in it; ``outcome`` (mrkdwn, escaped): what a button tap
    did, shown in place of the buttons."""
    changes = incident.changes_by_tag()
    if len(changes) <= 1:
        return _render_single(incident, contexts, outcome=outcome)
    context = next(iter(contexts.values()), render.Context())
    title = _title(incident)
    if closing:
        title = f"Incident {incident.id} closed: {title}"
    span = (incident.last_change_at - incident.opened_at).total_seconds()
    summary = (
        f"*{len(changes)} release tags* in {render.code(incident.group_key)} changed "
        f"({_counts(incident)}) within {_duration(span)}, first at "
        f"{render.when(incident.opened_at)}. The recorded digests stay the trusted ones."
    )
    blocks: list[dict[str, Any]] = [
        render.header(title),
        render.section(summary),
        render.section(f"*Now:* {now_mrkdwn(incident)}"),
        *_tag_sections(incident),
        render.section(pushers_mrkdwn(incident)),
    ]
    restoring = _restoring(incident, contexts)
    todo = needs_restore(incident)
    where = "in this thread" if context.threads else "in one closing message"
    if restoring:
        did = f"restoring every tag; the outcomes follow {where}."
    elif any(render.restoring(e, contexts.get(e.repository, context)) for e in changes.values()):
        did = f"restoring the tags of watches with a restore policy; the outcomes follow {where}."
    else:
        did = "alerted only: the tags stay as they are until someone acts."
    blocks.append(render.section(f"*What the watchdog did:* {did}"))
    if todo and not restoring:
        cfg = render.config_arg(context.config_path)
        commands = [
            f"tag-watchdog restore{cfg} --incident {incident.id}",
            f"tag-watchdog incidents{cfg} {incident.id}",
        ]
        blocks.append(
            render.section(
                "*Put them back by hand:*\n```" + render.escape("\n".join(commands)) + "```"
            )
        )
    if outcome is not None:
        blocks.append(render.section(outcome))
    elif context.buttons and todo and not restoring:
        blocks.extend(_buttons(incident, todo))
    blocks.append(
        render.context_block(
            f"tag-watchdog · incident {incident.id} · {len(changes)} tags · "
            f"{len({e.repository for e in changes.values()})} repositories"
        )
    )
    fallback = (
        f"tag-watchdog: {title} ({_counts(incident)}): "
        + ", ".join(_ref(e) for e in list(changes.values())[:10])
        + (" …" if len(changes) > 10 else "")
    )
    # at most MAX_TAG_LINES tag lines in a few sections: far below Block Kit's 50 blocks
    return render.make_message(render.escape(fallback), blocks)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "a second"
    if seconds < 120:
        return f"{int(seconds)} s"
    return f"{int(seconds // 60)} min"


def _render_single(
    incident: models.Incident, contexts: dict[str, render.Context], *, outcome: str | None
) -> render.Message:
    """An incident of one tag: its latest change drawn as a tag alert, the incident named."""
    change = next(iter(incident.changes_by_tag().values()), None)
    if change is None:  # an incident has a change; an empty one draws as a notice
        return render.make_message("tag-watchdog: empty incident", [render.section("(empty)")])
    context = contexts.get(change.repository, render.Context())
    latest = incident.latest_by_tag()[(change.repository, change.tag)]
    if outcome is not None:
        message = render.render_outcome(change, outcome, context)
    elif latest is not change and latest.kind not in _OPEN_KINDS:
        # settled (restored, accepted, back at its record): the buttons would act on nothing
        message = render.render_outcome(
            change,
            f"*Now:* {_status(latest)}",
            dataclasses.replace(context, buttons=False),
        )
        now = _STATES.get(latest.kind, latest.kind.value)
        message = dataclasses.replace(message, text=f"{message.text}; now {now}")
    else:
        message = render.render_event(change, context)
    blocks = [*message.blocks]
    footer = blocks[-1]
    blocks[-1] = render.context_block(footer["elements"][0]["text"] + f" · incident {incident.id}")
    return render.make_message(message.text, blocks)


def render_news(
    incident: models.Incident, news: list[models.Event], contexts: dict[str, render.Context]
) -> render.Message:
    """The thread reply about what joined ``incident`` after its message: one event drawn as its
    own alert, several as one list."""
    if len(news) == 1:
        event = news[0]
        context = contexts.get(event.repository, render.Context())
        return render.render_event(event, dataclasses.replace(context, buttons=False))
    kinds = collections.Counter(e.kind for e in news)
    what = ", ".join(f"{n} {_STATES.get(k, k.value)}" for k, n in kinds.most_common())
    lines = [f"• {render.code(_ref(e))}: {_news_line(e)}" for e in news[:MAX_TAG_LINES]]
    if len(news) > MAX_TAG_LINES:
        lines.append(f"…and {len(news) - MAX_TAG_LINES} more")
    blocks = [
        render.section(f"*Incident {incident.id}: {len(news)} more events* ({what})"),
        *[render.section(chunk) for chunk in _chunks(lines, render.MAX_SECTION - 100)],
        render.context_block(f"tag-watchdog · incident {incident.id}"),
    ]
    fallback = f"tag-watchdog: incident {incident.id}: {what}"
    return render.make_message(render.escape(fallback), blocks)


def _news_line(event: models.Event) -> str:
    if event.kind is models.EventKind.MOVED:
        return (
            f"*moved* {render.code(models.short_digest(event.old_digest or ''))} → "
            f"{render.code(models.short_digest(event.new_digest or ''))}"
        )
    return _status(event)


def button_value(incident: models.Incident, shown: int) -> str:
    """What Restore all / Accept all carry back: the incident and the highest event id the
    person saw (a tap acts on the tags and digests its message showed, nothing newer)."""
    return json.dumps({"incident": incident.id, "shown": shown}, separators=(",", ":"))


def _buttons(incident: models.Incident, todo: list[models.Event]) -> list[dict[str, Any]]:
    shown = covers(incident)
    moved = [e for e in todo if e.kind is models.EventKind.MOVED and e.new_digest]
    n = len(todo)
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": ACTION_RESTORE_ALL,
            "style": "primary",
            "text": render.plain(f"Restore all ({n})"),
            "value": button_value(incident, shown),
            "confirm": _confirm(
                "Restore every tag?",
                f"{n} tag{'s' if n > 1 else ''} will be put back at their recorded digests.",
                "Restore all",
            ),
        }
    ]
    if moved:
        elements.append(
            {
                "type": "button",
                "action_id": ACTION_ACCEPT_ALL,
                "style": "danger",
                "text": render.plain(f"Accept all ({len(moved)})"),
                "value": button_value(incident, shown),
                "confirm": _confirm(
                    "Accept every new digest?",
                    f"{len(moved)} moved tag{'s' if len(moved) > 1 else ''} will be recorded at "
                    "their new digests; the digests recorded now are no longer trusted.",
                    "Accept all",
                    danger=True,
                ),
            }
        )
    blocks: list[dict[str, Any]] = [
        {"type": "actions", "block_id": f"{ACTIONS_BLOCK}.{incident.id}", "elements": elements}
    ]
    per_tag: list[dict[str, Any]] = []
    # action ids are unique within a block (Slack's rule): ".N" tells the tags' buttons apart
    for n, change in enumerate(todo[:MAX_TAG_BUTTONS]):
        value = render.button_value(change, render.recorded_digest(change) or "", incident.id)
        per_tag.append(
            {
                "type": "button",
                "action_id": f"{render.ACTION_RESTORE}.{n}",
                "text": render.plain(
                    render.restore_label(_ref(change), render.recorded_digest(change) or "")
                ),
                "value": value,
            }
        )
        if change.kind is models.EventKind.MOVED and change.new_digest:
            per_tag.append(
                {
                    "type": "button",
                    "action_id": f"{render.ACTION_ACCEPT}.{n}",
                    "text": render.plain(f"Accept {_ref(change)}"),
                    "value": render.button_value(change, change.new_digest, incident.id),
                    "confirm": _confirm(
                        "Accept the new digest?",
                        f"{_ref(change)} will be recorded as {change.new_digest}.",
                        "Accept",
                        danger=True,
                    ),
                }
            )
    per_tag = [e for e in per_tag if len(e["value"]) <= render.MAX_BUTTON_VALUE]
    if per_tag:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"{ACTIONS_BLOCK}.{incident.id}.tags",
                "elements": per_tag,
            }
        )
    return blocks


def _confirm(title: str, text: str, yes: str, *, danger: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "title": render.plain(title),
        "text": render.plain(text, 300),
        "confirm": render.plain(yes),
        "deny": render.plain("Cancel"),
    }
    if danger:
        out["style"] = "danger"
    return out
