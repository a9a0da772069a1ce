"""The Slack text of the answers to button taps (mrkdwn, escaped here): what the message shows
after a Restore or Accept tap, and what only the tapper is told. Pure rendering; the endpoint's
logic is watchdog.web.slack."""

from __future__ import annotations

from typing import Any

from watchdog import models
from watchdog.alerts import render


def restoring_text(actor: str) -> str:
    return f":hourglass_flowing_sand: Restoring, tapped by {render.actor_mrkdwn(actor)}…"


def restored_text(actor: str, ref: str, digest: str) -> str:
    return (
        f":white_check_mark: *Restored* by {render.actor_mrkdwn(actor)}: `{render.escape(ref)}` "
        f"answers `{models.short_digest(digest)}` again."
    )


def restore_failed_text(actor: str, reason: str | None) -> str:
    return (
        f":x: {render.actor_mrkdwn(actor)} tapped Restore and it *failed*: "
        f"{render.escape(reason or 'unknown reason')}. The tag was left as it was."
    )


def accepted_text(actor: str, ref: str, digest: str) -> str:
    return (
        f":ballot_box_with_check: *Accepted* by {render.actor_mrkdwn(actor)}: "
        f"`{models.short_digest(digest)}` is now the recorded digest of `{render.escape(ref)}`."
    )


def already_text(ref: str, digest: str, done: str) -> str:
    """``done``: what the tap asked for, done already (``restored`` or ``accepted``)."""
    return (
        f"`{render.escape(ref)}` already answers `{models.short_digest(digest)}` as its recorded "
        f"digest: nothing to do (already {done})."
    )


def nothing_to_do_text(why: str) -> str:
    return f"Nothing to do: {render.escape(why)}."


def refused_text(actor: str, why: str) -> str:
    return f":warning: {render.actor_mrkdwn(actor)}: nothing was done: {render.escape(why)}"


def never_recorded_text(actor: str, ref: str) -> str:
    return (
        f":warning: {render.actor_mrkdwn(actor)}: nothing was done: `{render.escape(ref)}` "
        "was never recorded"
    )


def record_changed_text(
    actor: str, ref: str, recorded: str, digest: str, config_path: str | None = None
) -> str:
    """``digest``: what the tap asked for (the record when the alert was sent); the command that
    restores it anyway carries ``-c config_path``, the daemon's config."""
    command = f"tag-watchdog restore{render.config_arg(config_path)} {ref} --digest {digest}"
    return (
        f":warning: {render.actor_mrkdwn(actor)} tapped Restore, but the record of "
        f"`{render.escape(ref)}` changed since this alert (now `{models.short_digest(recorded)}`): "
        f"nothing was restored. If you mean it: `{render.escape(command)}`"
    )


def could_not(error: str) -> str:
    return (
        f":x: could not complete ({render.escape(error)}); nothing was changed. "
        "Tap again in a minute."
    )


def not_allowed_text(ref: str) -> str:
    return (
        "You are not on tag-watchdog's `slack.allowed_users` list: nothing was done to "
        f"`{render.escape(ref)}`."
    )


def busy_text(ref: str) -> str:
    return (
        f"Another tap on `{render.escape(ref)}` is being acted on: its outcome will replace the "
        "buttons. Nothing more was done."
    )


def restarting_text(ref: str) -> str:
    return (
        f"tag-watchdog is restarting: nothing was done to `{render.escape(ref)}`. "
        "Tap again in a minute."
    )


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": render.truncate_mrkdwn(text)}}


def with_progress(message: render.Message, text: str) -> render.Message:
    """``message`` (an alert with its buttons) with ``text`` shown above its buttons."""
    blocks = list(message.blocks)
    at = next((i for i, b in enumerate(blocks) if b.get("type") == "actions"), len(blocks) - 1)
    blocks.insert(max(at, 0), section(text))
    return render.Message(text=message.text, blocks=blocks)


def outcome_message(text: str) -> render.Message:
    """The outcome alone, in place of an alert that cannot be rebuilt."""
    return render.Message(text=text, blocks=[section(text)])
