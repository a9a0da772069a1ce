"""Slack messages: Block Kit rendering, pure.

Rendering turns an event (or a notice about the watchdog itself) and its context into a
``Message``: Block Kit ``blocks`` plus a plain-text fallback ``text``. It does no I/O, escapes
every value that came from outside (``&``, ``<``, ``>``: Slack's only control characters in
mrkdwn, so a label like ``<!channel>`` cannot ping anyone) and keeps within Block Kit's limits
(50 blocks, 3,000 characters a section, 150 a header). Sending is ``alerts.slack``'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from watchdog import config, models

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_HEADER = 150
MAX_FALLBACK = 3000

# The Slack channel's logger (not this module's name): what log filters already select on.
log = logging.getLogger("watchdog.alerts.slack")

# Interactive buttons: the action ids /slack/actions answers, and Slack's limit on a button value.
ACTION_RESTORE = "tag_watchdog.restore"
ACTION_ACCEPT = "tag_watchdog.accept"
ACTIONS_BLOCK = "tag_watchdog.actions"
MAX_BUTTON_VALUE = 2000


@dataclasses.dataclass(frozen=True)
class Message:
    """What is sent: the fallback ``text`` (notifications, screen readers) and the ``blocks``."""

    text: str
    blocks: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Context:
    """What rendering knows beyond the event: the watch's policy, when the tag was recorded, how
    the channel delivers follow-ups and which config file the commands it suggests need."""

    on_move: str | None = None  # "alert" | "restore" | None (repository no longer watched)
    on_delete: str | None = None  # the watch's on_delete; None: as on_move
    first_seen: dt.datetime | None = None
    buttons: bool = False  # Restore/Accept buttons (bot mode with slack.signing_secret)
    threads: bool = False  # bot mode: follow-ups go into the alert's thread (a webhook cannot)
    # The config file the daemon (or command) was started with: suggested commands carry
    # `-c PATH`, without which they would look at another database (or none).
    config_path: str | None = None


def context_for(
    settings: config.Settings,
    repository: str,
    *,
    first_seen: dt.datetime | None = None,
    buttons: bool = False,
) -> Context:
    """The Context of an alert about ``repository`` sent with ``settings``: its watch's policy,
    whether the channel threads (bot mode) and the config file, as an absolute path (a person
    runs the suggested command from another directory)."""
    watch = next((w for w in settings.watches if w.name == repository), None)
    return Context(
        on_move=watch.on_move if watch is not None else None,
        on_delete=watch.on_delete if watch is not None else None,
        first_seen=first_seen,
        buttons=buttons,
        threads=bool(settings.slack.token and settings.slack.channel),
        config_path=config_path(settings),
    )


def config_path(settings: config.Settings) -> str | None:
    """The absolute path of the file ``settings`` came from, for ``-c`` in suggested commands."""
    return os.path.abspath(settings.source) if settings.source else None


def config_arg(path: str | None) -> str:
    """`` -c PATH`` (quoted for a shell) for a suggested command; empty without a file."""
    return f" -c {shlex.quote(path)}" if path else ""


# --- escaping and limits -------------------------------------------------------------------------


def escape(value: object) -> str:
    """``value`` as mrkdwn-safe text: ``&``, ``<`` and ``>`` become entities; nothing else changes."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(value: object) -> str:
    # Inside `code` a backtick would end the span early: outside values lose theirs.
    return "`" + escape(str(value).replace("`", "'")) + "`"


def truncate_mrkdwn(text: str, limit: int = MAX_SECTION) -> str:
    """``text`` cut to at most ``limit`` characters without splitting an ``&..;`` entity and with
    a code block it opened closed again."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 5]
    amp, semi = cut.rfind("&"), cut.rfind(";")
    if amp > semi:
        cut = cut[:amp]
    cut += "…"
    if cut.count("```") % 2:
        cut += "```"
    return cut


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate_mrkdwn(text)}}


def header(text: str) -> dict[str, Any]:
    shown = " ".join(text.split())
    if len(shown) > MAX_HEADER:
        shown = shown[: MAX_HEADER - 1] + "…"
    return {"type": "header", "text": {"type": "plain_text", "text": shown, "emoji": False}}


def context_block(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate_mrkdwn(text)}]}


def make_message(fallback: str, blocks: list[dict[str, Any]]) -> Message:
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], context_block("(more details left out)")]
    return Message(text=truncate_mrkdwn(fallback, MAX_FALLBACK), blocks=blocks)


def when(value: dt.datetime | None) -> str:
    if value is None:
        return "unknown"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- rendering -----------------------------------------------------------------------------------

_TITLES = {
    models.EventKind.MOVED: "Release tag moved",
    models.EventKind.DELETED: "Release tag deleted",
    models.EventKind.REAPPEARED: "Release tag reappeared",
    models.EventKind.REVERTED: "Release tag back at its recorded digest",
    models.EventKind.RESTORED: "Release tag restored",
    models.EventKind.RESTORE_FAILED: "Restore FAILED",
    models.EventKind.ACCEPTED: "New digest accepted",
    models.EventKind.FIRST_SEEN: "Release tag recorded",
    models.EventKind.BROKEN: "Release broken: it cannot be pulled whole",
}


# Events whose summary names who did it (no "by ..." line under them).
_NAMES_ITS_ACTOR = frozenset({models.EventKind.RESTORED, models.EventKind.RESTORE_FAILED})

# Events after which a person may want to put the tag back by hand.
_MANUAL_RESTORE_KINDS = frozenset(
    {"moved", "deleted", "reappeared", "restore_failed", "restore_stopped", "broken"}
)


def restore_commands(
    event: models.Event, recorded: str | None, config_path: str | None = None
) -> list[str]:
    """The commands that put the tag back at ``recorded`` by hand (empty when unknown); the
    watchdog's own with ``-c CONFIG_PATH`` when one is given (it finds the record there).

    After a deletion ``crane tag REPO@DIGEST TAG`` works only while the digest is still in the
    registry (the tag alone was deleted): it is offered only when the check found it there;
    otherwise only ``tag-watchdog restore``, which takes the bytes from the registry or the
    archive, whichever has them (``--dry-run`` says which)."""
    if not recorded:
        return []
    restore = f"tag-watchdog restore{config_arg(config_path)} {event.repository}:{event.tag}"
    if event.kind is models.EventKind.BROKEN:
        # the tag answers: only re-PUTs of archived child manifests help, and no blob comes back
        return [restore] if event.detail.get("repairable") is True else []
    if (
        event.kind is models.EventKind.DELETED
        and event.detail.get("digest_in_registry") is not True
    ):
        return [restore]
    return [
        restore,
        f"crane tag {event.repository}@{recorded} {event.tag}",
    ]


def _by_watchdog(event: models.Event) -> bool:
    # The daemon's own restores are recorded as "watchdog"; a person's as cli:USER or slack:U123.
    return not event.actor or event.actor == "watchdog"


def _who(event: models.Event) -> str:
    """Who did what ``event`` records, for the start of a sentence (mrkdwn)."""
    if _by_watchdog(event):
        return "The watchdog"
    if event.actor == "api":  # actions.ACTOR_API: a holder of the API token, not named
        return "A call to the HTTP API"
    return actor_mrkdwn(event.actor)


def restoring(event: models.Event, context: Context) -> bool:
    """Whether the watchdog restores the tag on its own after ``event`` (a move: ``on_move:
    restore``; a deletion or a broken release: ``on_delete``): the alert then offers no manual
    restore, the outcome follows."""
    if event.kind is not models.EventKind.MOVED:
        return _auto_restoring(event, context)  # a deletion or a broken release, by on_delete
    return event.detail.get("restoring") is True or context.on_move == "restore"


def recorded_digest(event: models.Event) -> str | None:
    """The trusted digest an event is about: what a restore would put back."""
    recorded = event.detail.get("recorded_digest")
    if isinstance(recorded, str) and recorded:
        # The record itself, when the event carries it: after two moves, the old digest of the
        # second one is the first intruder, not the release.
        return recorded
    if event.kind in (models.EventKind.MOVED, models.EventKind.DELETED):
        return event.old_digest
    if event.kind is models.EventKind.REAPPEARED:
        return str(event.detail.get("recorded_digest") or event.old_digest or "") or None
    if event.kind in (models.EventKind.RESTORED, models.EventKind.RESTORE_FAILED):
        return event.new_digest  # the digest put back (or that could not be): the record
    return event.old_digest or event.new_digest


# --- event summaries: what happened, one mrkdwn sentence and the plain fallback -------------------

# Each gets the event, its ``repository:tag`` and the recorded digest (see ``_recorded``).
Summary = Callable[[models.Event, str, str | None], tuple[str, str]]


def _moved(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    return (
        f"*{code(ref)}* now answers another digest. The recorded digest stays the trusted one.",
        f"tag-watchdog: {ref} moved {models.short_digest(event.old_digest or '')} -> "
        f"{models.short_digest(event.new_digest or '')}",
    )


def _deleted(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    present = event.detail.get("digest_in_registry")
    where = ""
    if present is True:
        where = " Only the tag was deleted: its recorded digest is still in the registry."
    elif present is False:
        where = (
            " Its recorded digest is gone from the registry too (deleted by digest, or "
            "garbage-collected)."
        )
    return (
        f"*{code(ref)}* is gone: absent from the tag list and the registry answers "
        f"`MANIFEST_UNKNOWN`, twice in a row.{where}",
        f"tag-watchdog: {ref} was deleted (was {models.short_digest(event.old_digest or '')})",
    )


def _broken(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    children = list(event.detail.get("missing_children") or [])
    blobs = list(event.detail.get("missing_blobs") or [])
    gone = []
    if children:
        gone.append(f"{len(children)} child manifest(s)")
    if blobs:
        gone.append(f"{len(blobs)} blob(s)")
    lines = [f"child manifest {code(d)}" for d in children[:20]]
    lines += [f"blob {code(d)}" for d in blobs[:20]]
    text = (
        f"*{code(ref)}* still answers its recorded digest {code(recorded or '?')} but cannot "
        f"be pulled whole: {' and '.join(gone) or 'parts'} gone from the registry."
    )
    if lines:
        text += "\n" + "\n".join(lines)
    if blobs and event.detail.get("in_vault") is True:
        text += "\nThe vault keeps a complete copy of this release: a restore copies them back."
    elif blobs:
        text += (
            "\nA missing blob cannot be put back from the manifest archive (it holds no "
            "layers): only a copy kept elsewhere (the vault) can."
        )
    return text, f"tag-watchdog: {ref} is broken: {' and '.join(gone) or 'parts'} gone"


def _reappeared(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    return (
        f"*{code(ref)}* answers again, after it was deleted.",
        f"tag-watchdog: {ref} reappeared at {models.short_digest(event.new_digest or '')}",
    )


def _reverted(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    return (
        f"*{code(ref)}* is back at its recorded digest (put back by someone else).",
        f"tag-watchdog: {ref} is back at its recorded digest",
    )


def _restored(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    by = "" if _by_watchdog(event) else f" by {event.actor}"
    return (
        f"{_who(event)} put *{code(ref)}* back at its recorded digest.",
        f"tag-watchdog: {ref} restored to {models.short_digest(recorded or '')}{by}",
    )


def _restore_failed(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    reason = event.detail.get("reason") or event.detail.get("error") or "unknown reason"
    by = "" if _by_watchdog(event) else f" (by {event.actor})"
    return (
        f"{_who(event)} could *not* put *{code(ref)}* back: {escape(reason)}. Nothing was changed.",
        f"tag-watchdog: restoring {ref} FAILED{by}: {reason}",
    )


def _restore_stopped(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    if event.detail.get("after") == "deleted":
        return (
            f"*Something keeps deleting {code(ref)}*: automatic restores of this tag are "
            "stopped (loop protection). Find the job that deletes it (a retention policy?).",
            f"tag-watchdog: auto-restore of {ref} stopped: something keeps deleting it",
        )
    return (
        f"*Something keeps pushing {code(ref)}*: automatic restores of this tag are stopped "
        "(loop protection). Find the pipeline that pushes it.",
        f"tag-watchdog: auto-restore of {ref} stopped: something keeps pushing it",
    )


def _other(event: models.Event, ref: str, recorded: str | None) -> tuple[str, str]:
    # Kinds that are never alerted (first sight, accept) still render, plainly.
    kind = event.kind.value
    return f"*{code(ref)}*: {escape(kind)}.", f"tag-watchdog: {ref} {kind}"


_SUMMARIES: dict[models.EventKind, Summary] = {
    models.EventKind.MOVED: _moved,
    models.EventKind.DELETED: _deleted,
    models.EventKind.REAPPEARED: _reappeared,
    models.EventKind.BROKEN: _broken,
    models.EventKind.REVERTED: _reverted,
    models.EventKind.RESTORED: _restored,
    models.EventKind.RESTORE_FAILED: _restore_failed,
    models.EventKind.RESTORE_STOPPED: _restore_stopped,
}


# --- event details: the blocks under the summary --------------------------------------------------


def _fields(event: models.Event, context: Context) -> dict[str, Any]:
    """Both digests (short), since when the tag is recorded and when this was seen."""
    fields: list[str] = []
    if event.old_digest:
        fields.append(f"*Old digest*\n{code(models.short_digest(event.old_digest))}")
    if event.new_digest:
        fields.append(f"*New digest*\n{code(models.short_digest(event.new_digest))}")
    if context.first_seen is not None:
        fields.append(f"*Recorded since*\n{when(context.first_seen)}")
    fields.append(f"*Seen*\n{when(event.at)}")
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]}


def _details(event: models.Event) -> list[dict[str, Any]]:
    """The full digests (for copying), the platforms that changed and the images' labels."""
    blocks: list[dict[str, Any]] = []
    digests = []
    if event.old_digest:
        digests.append(f"old: {escape(event.old_digest)}")
    if event.new_digest:
        digests.append(f"new: {escape(event.new_digest)}")
    if digests:
        blocks.append(section("*Full digests*\n```" + "\n".join(digests) + "```"))
    platforms = event.detail.get("changed_platforms") or []
    if platforms:
        blocks.append(
            section("*Platforms changed:* " + ", ".join(code(p) for p in platforms[:100]))
        )
    images = event.detail.get("images") or {}
    image_lines = []
    for side in ("old", "new"):
        info = images.get(side) if isinstance(images, dict) else None
        if not isinstance(info, dict) or not info:
            continue
        parts = [
            f"{name} {code(info[name])}"
            for name in ("created", "revision", "source")
            if info.get(name)
        ]
        link = commit_url(info.get("source"), info.get("revision"))
        if link is not None:
            parts.append(f"<{link}|commit>")
        image_lines.append(f"*{side.capitalize()} image:* " + ", ".join(parts))
    if image_lines:
        blocks.append(section("\n".join(image_lines)))
    pushed = pushed_by_mrkdwn(event)
    if pushed is not None:
        blocks.append(section(pushed))
    return blocks


# the hosts whose commit pages are known: GitHub's ``/commit/<sha>``, GitLab's ``/-/commit/<sha>``
_FORGE_RE = re.compile(
    r"(?P<base>https://(?P<host>github\.com|gitlab\.com|gitlab\.[A-Za-z0-9.-]+)"
    r"/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+)/?"
)
_REVISION_RE = re.compile(r"[0-9a-fA-F]{7,64}")


def commit_url(source: object, revision: object) -> str | None:
    """The commit page of an image's ``org.opencontainers.image.source`` and ``.revision``
    labels when the source is a GitHub or GitLab repository URL and the revision a commit hash;
    None otherwise (labels are the pusher's text: nothing else becomes a link)."""
    if not isinstance(source, str) or not isinstance(revision, str):
        return None
    forge = _FORGE_RE.fullmatch(source.strip())
    if forge is None or not _REVISION_RE.fullmatch(revision.strip()):
        return None
    sep = "/commit/" if forge["host"] == "github.com" else "/-/commit/"
    return forge["base"].removesuffix(".git") + sep + revision.strip().lower()


def pushed_by_mrkdwn(event: models.Event) -> str | None:
    """Who pushed (a move) or deleted (a deletion), as registry notifications told the daemon;
    "unknown" when the change was found without one. None for other kinds of event."""
    if event.kind is models.EventKind.MOVED:
        label = "Pushed by"
    elif event.kind is models.EventKind.DELETED:
        label = "Deleted by"
    else:
        return None
    who = event.detail.get("pushed_by")
    if not isinstance(who, dict) or not who:
        return (
            f"*{label}:* unknown (found by polling; registry notifications to "
            "`/hooks/registry` name the pusher)"
        )
    parts = [code(who["actor"]) if who.get("actor") else "an unnamed client"]
    if who.get("address"):
        parts.append(f"from {code(who['address'])}")
    if who.get("user_agent"):
        parts.append(f"with {code(who['user_agent'])}")
    return f"*{label}:* " + " ".join(parts)


def render_event(event: models.Event, context: Context = Context()) -> Message:
    """The Slack message about ``event``. Pure: the same event and context give the same message."""
    kind = event.kind
    ref = f"{event.repository}:{event.tag}"
    title = _TITLES.get(kind, kind.value.replace("_", " ").capitalize())
    recorded = recorded_digest(event)
    summary, fallback = _SUMMARIES.get(kind, _other)(event, ref, recorded)
    blocks = [
        header(f"{title}: {ref}"),
        section(summary),
        _fields(event, context),
        *_details(event),
    ]
    action = _action(event, context)
    if action:
        blocks.append(section(f"*What the watchdog did:* {action}"))
    commands = (
        [] if restoring(event, context) else restore_commands(event, recorded, context.config_path)
    )
    if commands and kind.value in _MANUAL_RESTORE_KINDS:
        blocks.append(section("*Put it back by hand:*\n```" + escape("\n".join(commands)) + "```"))
        fallback += f". Put it back: {commands[0]}"
    if not _by_watchdog(event) and kind not in _NAMES_ITS_ACTOR:
        blocks.append(context_block(f"by {actor_mrkdwn(event.actor)}"))
    if context.buttons:
        buttons = _buttons(event, recorded, context)
        if buttons is not None:
            blocks.append(buttons)
    blocks.append(context_block(f"tag-watchdog · event {event.id or '-'} · {escape(kind.value)}"))
    return make_message(escape(fallback), blocks)


def actor_mrkdwn(actor: str) -> str:
    """Who did it, for a message: a Slack user (``slack:U123 (alice)``) becomes a mention."""
    name, _, rest = actor.partition(" ")
    if name.startswith("slack:") and config.SLACK_USER_RE.match(name[6:]):
        return f"<@{name[6:]}>" + (f" {escape(rest)}" if rest else "")
    return escape(actor)


def button_value(event: models.Event, digest: str, incident: int | None = None) -> str:
    """What a button carries back to /slack/actions: the event, the tag and the one digest the
    person saw (a tap acts on exactly that digest or not at all), and the incident whose
    message holds the button, if any (the tap redraws that message)."""
    value: dict[str, Any] = {
        "event": event.id,
        "ref": f"{event.repository}:{event.tag}",
        "digest": digest,
    }
    if incident is not None:
        value["incident"] = incident
    return json.dumps(value, separators=(",", ":"))


def _buttons(event: models.Event, recorded: str | None, context: Context) -> dict[str, Any] | None:
    kind = event.kind.value
    elements: list[dict[str, Any]] = []
    auto = restoring(event, context)  # the watchdog is restoring already
    if recorded and kind in _MANUAL_RESTORE_KINDS and not auto:
        elements.append(
            {
                "type": "button",
                "action_id": ACTION_RESTORE,
                "style": "primary",
                "text": plain(restore_label(event.tag, recorded)),
                "value": button_value(event, recorded),
            }
        )
    new = event.new_digest
    if new and kind in ("moved", "restore_stopped") and not auto:
        elements.append(
            {
                "type": "button",
                "action_id": ACTION_ACCEPT,
                "style": "danger",
                "text": plain("Accept new digest"),
                "value": button_value(event, new),
                # Accepting trusts the intruder: one more tap to be sure, on a phone too.
                "confirm": {
                    "title": plain("Accept the new digest?"),
                    # plain text only in a confirmation dialog (Block Kit), at most 300 chars
                    "text": plain(
                        f"{event.tag} will be recorded as {new}; the digest recorded now is "
                        "no longer the trusted one.",
                        300,
                    ),
                    "confirm": plain("Accept"),
                    "deny": plain("Cancel"),
                    "style": "danger",
                },
            }
        )
    if not elements:
        return None
    if any(len(e["value"]) > MAX_BUTTON_VALUE for e in elements):
        # Slack refuses the whole message over a long value: the alert goes out without buttons
        log.warning(
            "slack_buttons_dropped ref=%s:%s reason=value_over_%d_chars",
            event.repository,
            event.tag,
            MAX_BUTTON_VALUE,
        )
        return None
    return {"type": "actions", "block_id": f"{ACTIONS_BLOCK}.{event.id or 0}", "elements": elements}


def restore_label(tag: str, digest: str, limit: int = 75) -> str:
    """ "Restore TAG to sha256:abc…", within a label's 75 characters: a long tag is cut, never the
    digest (what the person checks before tapping)."""
    tail = f" to {models.short_digest(digest)}"
    room = limit - len("Restore ") - len(tail)
    if len(tag) > room:
        tag = tag[: room - 1] + "…"
    return f"Restore {tag}{tail}"


def plain(text: str, limit: int = 75) -> dict[str, Any]:
    # Button labels and confirm titles are plain text of at most 75 characters.
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": False}


def render_outcome(event: models.Event, outcome: str, context: Context = Context()) -> Message:
    """The alert about ``event`` again, without its buttons, with ``outcome`` (mrkdwn, already
    escaped) in their place: what a tap on a button did, for ``chat.update``."""
    original = render_event(event, dataclasses.replace(context, buttons=False))
    blocks = [*original.blocks[:-1], section(outcome), original.blocks[-1]]
    return make_message(original.text, blocks)


def delete_policy(event: models.Event, context: Context) -> str:
    """The policy a deletion met, as the config spells it (``on_delete: restore``): what the
    event recorded, else the watch's settings now."""
    recorded = event.detail.get("policy")
    if isinstance(recorded, str) and recorded:
        return recorded
    if context.on_delete:
        return f"on_delete: {context.on_delete}"
    return f"on_move: {context.on_move or 'alert'}"


def _auto_restoring(event: models.Event, context: Context) -> bool:
    """A deletion (or a broken release) the watchdog is putting back itself (its outcome
    follows)."""
    if event.kind is models.EventKind.BROKEN:
        return delete_policy(event, context).endswith(": restore")
    if event.kind is not models.EventKind.DELETED:
        return False
    if "restoring" in event.detail or "policy" in event.detail:
        return event.detail.get("restoring") is True
    return delete_policy(event, context).endswith(": restore")


def _action(event: models.Event, context: Context) -> str:
    # A webhook cannot thread: an outcome is a message of its own, after this one.
    where = "in this thread" if context.threads else "in a message of its own"
    if event.kind is models.EventKind.BROKEN:
        policy = escape(delete_policy(event, context))
        if _auto_restoring(event, context):
            what = "archived child manifests are re-PUT"
            if event.detail.get("in_vault") is True:
                what += ", missing blobs copied back from the vault"
            return f"repairing it (`{policy}`): {what}; the outcome follows {where}."
        return f"alerted only (`{policy}`): the release stays broken until someone repairs it."
    if event.kind is models.EventKind.DELETED:
        policy = escape(delete_policy(event, context))
        if _auto_restoring(event, context):
            return f"restoring the recorded digest (`{policy}`); the outcome follows {where}."
        return f"alerted only (`{policy}`): the tag stays deleted until someone puts it back."
    if restoring(event, context):
        return (
            "restoring the recorded digest (`on_move: restore`); the outcome (restored, or how "
            f"to put it back by hand) follows {where}."
        )
    if event.kind is models.EventKind.MOVED:
        return "alerted only (`on_move: alert`): the tag still answers the new digest."
    if not _by_watchdog(event):
        return ""  # a person's restore: the summary names them; the watchdog did nothing
    if event.kind is models.EventKind.RESTORED:
        return "restored the recorded digest."
    if event.kind is models.EventKind.RESTORE_FAILED:
        return "tried to restore and failed; the tag was left as it was."
    return ""


def render_notice(notice: dict[str, Any]) -> Message:
    """The Slack message about the watchdog itself (``registry_unreachable``, ``registry_recovered``)."""
    kind = str(notice.get("kind", "notice"))
    registry = str(notice.get("registry", "?"))
    if kind == "registry_unreachable":
        since = notice.get("since")
        error = notice.get("error") or "unknown error"
        blocks = [
            header(f"Registry unreachable: {registry}"),
            section(
                f"tag-watchdog cannot check {code(registry)} since {escape(since or '?')}: "
                f"{escape(error)}\nMoves there go unnoticed until it answers again. "
                "One message follows when it recovers."
            ),
        ]
        fallback = f"tag-watchdog: registry {registry} unreachable since {since}: {error}"
    elif kind == "registry_recovered":
        blocks = [
            header(f"Registry reachable again: {registry}"),
            section(
                f"{code(registry)} answers again (unreachable for "
                f"{escape(notice.get('down_for', '?'))}); checks are back to normal."
            ),
        ]
        fallback = f"tag-watchdog: registry {registry} reachable again"
    else:
        blocks = [section(escape(notice.get("text") or kind))]
        fallback = str(notice.get("text") or kind)
    return make_message(escape(fallback), blocks)


def render_test() -> Message:
    """The message of ``tag-watchdog alerts test``."""
    text = "tag-watchdog test alert: this channel receives release-tag alerts."
    return make_message(
        text, [section(f"*{text}*"), context_block("sent by `tag-watchdog alerts test`")]
    )


def render_item(item: models.OutboxItem, settings: config.Settings) -> Message:
    """The message for one outbox item: its event with the watch's context, or its notice."""
    if item.event is not None:
        context = context_for(
            settings,
            item.event.repository,
            first_seen=item.first_seen,
            buttons=settings.slack.buttons,
        )
        return render_event(item.event, context)
    return render_notice(item.notice or {})
