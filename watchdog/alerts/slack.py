"""Slack: Block Kit rendering (pure) and sending through slack-sdk (Incoming Webhook or bot token).

Rendering turns an event (or a notice about the watchdog itself) and its context into a
``Message``: Block Kit ``blocks`` plus a plain-text fallback ``text``. It does no I/O, escapes
every value that came from outside (``&``, ``<``, ``>``: Slack's only control characters in
mrkdwn, so a label like ``<!channel>`` cannot ping anyone) and keeps within Block Kit's limits
(50 blocks, 3,000 characters a section, 150 a header).

Sending translates slack-sdk's outcomes into ``errors.AlertError`` once, here: 429 (with
``Retry-After``), 5xx and connection errors are temporary; anything else (``invalid_auth``,
``channel_not_found``, a 404 from a deleted webhook) is permanent. slack-sdk's own retry handlers
are switched off: the outbox worker owns the one retry loop. The webhook URL and the token never
appear in an error, a log line or a stored reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from typing import Any, Protocol

from slack_sdk import errors as slack_errors
from slack_sdk import web, webhook

from watchdog import config, errors, models, retry

CHANNEL = "slack"
MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_HEADER = 150
MAX_FALLBACK = 3000
DEFAULT_BASE_URL = "https://slack.com/api/"

# slack-sdk logs request URLs and headers at DEBUG (the webhook URL is the secret itself) and
# errors of its own: it gets a logger of its own that says nothing.
log = logging.getLogger("watchdog.alerts.slack")
_sdk_log = logging.getLogger("watchdog.alerts.slack_sdk")
_sdk_log.disabled = True  # we log (and redact) every outcome ourselves

# Interactive buttons: the action ids /slack/actions answers, and Slack's limit on a button value.
ACTION_RESTORE = "tag_watchdog.restore"
ACTION_ACCEPT = "tag_watchdog.accept"
ACTIONS_BLOCK = "tag_watchdog.actions"
MAX_BUTTON_VALUE = 2000

# Web API errors worth trying again; every other ``error`` is a permanent refusal.
_TEMPORARY_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


@dataclasses.dataclass(frozen=True)
class Message:
    """What is sent: the fallback ``text`` (notifications, screen readers) and the ``blocks``."""

    text: str
    blocks: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Context:
    """What rendering knows beyond the event: the watch's policy and when the tag was recorded."""

    on_move: str | None = None  # "alert" | "restore" | None (repository no longer watched)
    first_seen: dt.datetime | None = None
    buttons: bool = False  # Restore/Accept buttons (bot mode with slack.signing_secret)


# --- escaping and limits -------------------------------------------------------------------------


def escape(value: object) -> str:
    """``value`` as mrkdwn-safe text: ``&``, ``<`` and ``>`` become entities; nothing else changes."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: object) -> str:
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


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate_mrkdwn(text)}}


def _header(text: str) -> dict[str, Any]:
    plain = " ".join(text.split())
    if len(plain) > MAX_HEADER:
        plain = plain[: MAX_HEADER - 1] + "…"
    return {"type": "header", "text": {"type": "plain_text", "text": plain, "emoji": False}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": truncate_mrkdwn(text)}]}


def _message(fallback: str, blocks: list[dict[str, Any]]) -> Message:
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], _context("(more details left out)")]
    return Message(text=truncate_mrkdwn(fallback, MAX_FALLBACK), blocks=blocks)


def _when(value: dt.datetime | None) -> str:
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
}


# Events after which a person may want to put the tag back by hand.
_MANUAL_RESTORE_KINDS = frozenset(
    {"moved", "deleted", "reappeared", "restore_failed", "restore_stopped"}
)


def restore_commands(event: models.Event, recorded: str | None) -> list[str]:
    """The commands that put the tag back at ``recorded`` by hand (empty when unknown)."""
    if not recorded:
        return []
    return [
        f"tag-watchdog restore {event.repository}:{event.tag}",
        f"crane tag {event.repository}@{recorded} {event.tag}",
    ]


def _recorded(event: models.Event) -> str | None:
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


def render_event(event: models.Event, context: Context = Context()) -> Message:
    """The Slack message about ``event``. Pure: the same event and context give the same message."""
    kind = event.kind
    ref = f"{event.repository}:{event.tag}"
    title = _TITLES.get(kind, kind.value.replace("_", " ").capitalize())
    blocks: list[dict[str, Any]] = [_header(f"{title}: {ref}")]
    old, new = event.old_digest, event.new_digest
    recorded = _recorded(event)
    lines: list[str] = []
    if kind is models.EventKind.MOVED:
        lines.append(
            f"*{_code(ref)}* now answers another digest. The recorded digest stays the trusted one."
        )
        fallback = (
            f"tag-watchdog: {ref} moved {models.short_digest(old or '')} -> "
            f"{models.short_digest(new or '')}"
        )
    elif kind is models.EventKind.DELETED:
        lines.append(
            f"*{_code(ref)}* is gone: absent from the tag list and the registry answers "
            "`MANIFEST_UNKNOWN`, twice in a row."
        )
        fallback = f"tag-watchdog: {ref} was deleted (was {models.short_digest(old or '')})"
    elif kind is models.EventKind.REAPPEARED:
        lines.append(f"*{_code(ref)}* answers again, after it was deleted.")
        fallback = f"tag-watchdog: {ref} reappeared at {models.short_digest(new or '')}"
    elif kind is models.EventKind.REVERTED:
        lines.append(f"*{_code(ref)}* is back at its recorded digest (put back by someone else).")
        fallback = f"tag-watchdog: {ref} is back at its recorded digest"
    elif kind is models.EventKind.RESTORED:
        lines.append(f"The watchdog put *{_code(ref)}* back at its recorded digest.")
        fallback = f"tag-watchdog: {ref} restored to {models.short_digest(recorded or '')}"
    elif kind is models.EventKind.RESTORE_FAILED:
        reason = event.detail.get("reason") or event.detail.get("error") or "unknown reason"
        lines.append(
            f"The watchdog could *not* put *{_code(ref)}* back: {escape(reason)}. "
            "Nothing was changed."
        )
        fallback = f"tag-watchdog: restoring {ref} FAILED: {reason}"
    elif kind.value == "restore_stopped":
        lines.append(
            f"*Something keeps pushing {_code(ref)}*: automatic restores of this tag are stopped "
            "(loop protection). Find the pipeline that pushes it."
        )
        fallback = f"tag-watchdog: auto-restore of {ref} stopped: something keeps pushing it"
    else:
        lines.append(f"*{_code(ref)}*: {escape(kind.value)}.")
        fallback = f"tag-watchdog: {ref} {kind.value}"
    blocks.append(_section("\n".join(lines)))

    fields: list[str] = []
    if old:
        fields.append(f"*Old digest*\n{_code(models.short_digest(old))}")
    if new:
        fields.append(f"*New digest*\n{_code(models.short_digest(new))}")
    if context.first_seen is not None:
        fields.append(f"*Recorded since*\n{_when(context.first_seen)}")
    fields.append(f"*Seen*\n{_when(event.at)}")
    blocks.append(
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]}
    )
    digests = []
    if old:
        digests.append(f"old: {escape(old)}")
    if new:
        digests.append(f"new: {escape(new)}")
    if digests:
        blocks.append(_section("*Full digests*\n```" + "\n".join(digests) + "```"))

    platforms = event.detail.get("changed_platforms") or []
    if platforms:
        blocks.append(
            _section("*Platforms changed:* " + ", ".join(_code(p) for p in platforms[:100]))
        )

    images = event.detail.get("images") or {}
    image_lines = []
    for side in ("old", "new"):
        info = images.get(side) if isinstance(images, dict) else None
        if not isinstance(info, dict) or not info:
            continue
        parts = [
            f"{name} {_code(info[name])}"
            for name in ("created", "revision", "source")
            if info.get(name)
        ]
        image_lines.append(f"*{side.capitalize()} image:* " + ", ".join(parts))
    if image_lines:
        blocks.append(_section("\n".join(image_lines)))

    action = _action(event, context)
    if action:
        blocks.append(_section(f"*What the watchdog did:* {action}"))
    commands = restore_commands(event, recorded)
    if commands and kind.value in _MANUAL_RESTORE_KINDS:
        blocks.append(_section("*Put it back by hand:*\n```" + escape("\n".join(commands)) + "```"))
        fallback += f". Put it back: {commands[0]}"
    if event.actor and event.actor != "watchdog":
        blocks.append(_context(f"by {actor_mrkdwn(event.actor)}"))
    if context.buttons:
        buttons = _buttons(event, recorded, context)
        if buttons is not None:
            blocks.append(buttons)
    blocks.append(_context(f"tag-watchdog · event {event.id or '-'} · {escape(kind.value)}"))
    return _message(escape(fallback), blocks)


def actor_mrkdwn(actor: str) -> str:
    """Who did it, for a message: a Slack user (``slack:U123 (alice)``) becomes a mention."""
    name, _, rest = actor.partition(" ")
    if name.startswith("slack:") and config.SLACK_USER_RE.match(name[6:]):
        return f"<@{name[6:]}>" + (f" {escape(rest)}" if rest else "")
    return escape(actor)


def button_value(event: models.Event, digest: str) -> str:
    """What a button carries back to /slack/actions: the event, the tag and the one digest the
    person saw (a tap acts on exactly that digest or not at all)."""
    return json.dumps(
        {"event": event.id, "ref": f"{event.repository}:{event.tag}", "digest": digest},
        separators=(",", ":"),
    )


def _buttons(event: models.Event, recorded: str | None, context: Context) -> dict[str, Any] | None:
    kind = event.kind.value
    elements: list[dict[str, Any]] = []
    auto = context.on_move == "restore" and kind == "moved"  # the watchdog is restoring already
    if recorded and kind in _MANUAL_RESTORE_KINDS and not auto:
        elements.append(
            {
                "type": "button",
                "action_id": ACTION_RESTORE,
                "style": "primary",
                "text": _plain(_restore_label(event.tag, recorded)),
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
                "text": _plain("Accept new digest"),
                "value": button_value(event, new),
                # Accepting trusts the intruder: one more tap to be sure, on a phone too.
                "confirm": {
                    "title": _plain("Accept the new digest?"),
                    # plain text only in a confirmation dialog (Block Kit), at most 300 chars
                    "text": _plain(
                        f"{event.tag} will be recorded as {new}; the digest recorded now is "
                        "no longer the trusted one.",
                        300,
                    ),
                    "confirm": _plain("Accept"),
                    "deny": _plain("Cancel"),
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


def _restore_label(tag: str, digest: str, limit: int = 75) -> str:
    """ "Restore TAG to sha256:abc…", within a label's 75 characters: a long tag is cut, never the
    digest (what the person checks before tapping)."""
    tail = f" to {models.short_digest(digest)}"
    room = limit - len("Restore ") - len(tail)
    if len(tag) > room:
        tag = tag[: room - 1] + "…"
    return f"Restore {tag}{tail}"


def _plain(text: str, limit: int = 75) -> dict[str, Any]:
    # Button labels and confirm titles are plain text of at most 75 characters.
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": False}


def render_outcome(event: models.Event, outcome: str, context: Context = Context()) -> Message:
    """The alert about ``event`` again, without its buttons, with ``outcome`` (mrkdwn, already
    escaped) in their place: what a tap on a button did, for ``chat.update``."""
    original = render_event(event, dataclasses.replace(context, buttons=False))
    blocks = [*original.blocks[:-1], _section(outcome), original.blocks[-1]]
    return _message(original.text, blocks)


def _action(event: models.Event, context: Context) -> str:
    if event.kind in (models.EventKind.MOVED, models.EventKind.DELETED):
        if context.on_move == "restore" and event.kind is models.EventKind.MOVED:
            return "restoring the recorded digest (`on_move: restore`); the outcome follows in the thread."
        return "alerted only (`on_move: alert`): the tag still answers the new digest."
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
            _header(f"Registry unreachable: {registry}"),
            _section(
                f"tag-watchdog cannot check {_code(registry)} since {escape(since or '?')}: "
                f"{escape(error)}\nMoves there go unnoticed until it answers again. "
                "One message follows when it recovers."
            ),
        ]
        fallback = f"tag-watchdog: registry {registry} unreachable since {since}: {error}"
    elif kind == "registry_recovered":
        blocks = [
            _header(f"Registry reachable again: {registry}"),
            _section(
                f"{_code(registry)} answers again (unreachable for "
                f"{escape(notice.get('down_for', '?'))}); checks are back to normal."
            ),
        ]
        fallback = f"tag-watchdog: registry {registry} reachable again"
    else:
        blocks = [_section(escape(notice.get("text") or kind))]
        fallback = str(notice.get("text") or kind)
    return _message(escape(fallback), blocks)


def render_test() -> Message:
    """The message of ``tag-watchdog alerts test``."""
    text = "tag-watchdog test alert: this channel receives release-tag alerts."
    return _message(text, [_section(f"*{text}*"), _context("sent by `tag-watchdog alerts test`")])


def render_item(item: models.OutboxItem, settings: config.Settings) -> Message:
    """The message for one outbox item: its event with the watch's context, or its notice."""
    if item.event is not None:
        on_move = next(
            (w.on_move for w in settings.watches if w.name == item.event.repository), None
        )
        return render_event(
            item.event,
            Context(on_move=on_move, first_seen=item.first_seen, buttons=settings.slack.buttons),
        )
    return render_notice(item.notice or {})


# --- sending -------------------------------------------------------------------------------------


class Sender(Protocol):
    """Delivers a message on one channel; returns the channel's message id (for threads)."""

    name: str

    def send(self, message: Message, thread_id: str | None = None) -> str | None: ...


def configured(settings: config.SlackSettings) -> bool:
    """True when Slack alerts are configured (a webhook URL, or a token and a channel)."""
    return bool(settings.webhook_url) or bool(settings.token and settings.channel)


def sender(settings: config.SlackSettings, *, timeout: float = 10.0) -> Sender | None:
    """The configured Slack sender: bot mode when a token is given (threads), else the webhook."""
    if settings.token and settings.channel:
        return BotSender(settings.token, settings.channel, settings.base_url, timeout=timeout)
    if settings.webhook_url:
        return WebhookSender(settings.webhook_url, timeout=timeout)
    return None


class WebhookSender:
    """An Incoming Webhook. Webhooks cannot thread: every message stands alone."""

    name = CHANNEL

    def __init__(self, url: config.Secret, *, timeout: float = 10.0) -> None:
        self._url = url
        self._timeout = timeout

    def send(self, message: Message, thread_id: str | None = None) -> str | None:
        """Post ``message``; return None (webhooks give no message id). Raises AlertError."""
        client = webhook.WebhookClient(
            self._url.reveal(),
            timeout=max(1, int(self._timeout)),
            logger=_sdk_log,
            retry_handlers=[],
        )
        try:
            resp = client.send(text=message.text, blocks=message.blocks, unfurl_links=False)
        except Exception as exc:
            raise _unreachable("webhook", exc, self._url.reveal()) from None
        if resp.status_code == 200:
            return None
        raise _refused(
            "webhook",
            resp.status_code,
            str(resp.body or "").strip(),
            resp.headers or {},
            self._url.reveal(),
        )


# Bot mode: every alert carries Slack message metadata with the outbox row's random send key, so
# that after a crash between Slack taking an alert and the ``delivered`` commit, the outbox finds
# the message in the channel (``conversations.history``, or ``.replies`` in a thread) instead of
# sending it again. No secret goes into it. The lookup reads at most LOOKUP_MAX_PAGES pages.
METADATA_EVENT_TYPE = "tag_watchdog_alert"
LOOKUP_PAGE = 100  # messages a page (Slack may answer fewer: 15 for some apps since 2025)
LOOKUP_MAX_PAGES = 10
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,}$")


@dataclasses.dataclass(frozen=True)
class Posted:
    """A message in Slack: its ``ts`` and the id of the channel it is in (None when unknown)."""

    ts: str | None
    channel: str | None


def alert_metadata(item_id: int, event_id: int | None, send_key: str) -> dict[str, Any]:
    """The message metadata of an alert (``chat.postMessage``'s ``metadata``): the outbox row,
    its event and the row's random send key; nothing secret."""
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {"outbox_id": item_id, "event_id": event_id, "send_key": send_key},
    }


class BotSender:
    """A bot token posting with ``chat.postMessage``; follow-ups go into the first alert's thread."""

    name = CHANNEL

    def __init__(
        self,
        token: config.Secret,
        channel: str,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._token = token
        self._channel = channel
        base = base_url or DEFAULT_BASE_URL
        self._base_url = base if base.endswith("/") else base + "/"
        self._timeout = timeout
        self._channel_id = channel if _CHANNEL_ID.match(channel) else None

    @property
    def channel_id(self) -> str | None:
        """Slack's id of the configured channel, when known: the setting itself when it is an
        id, else the channel Slack named in its answer to the last post (None before one)."""
        return self._channel_id

    def send(self, message: Message, thread_id: str | None = None) -> str | None:
        """Post ``message`` (into ``thread_id``'s thread when given); return its ``ts``.
        Raises AlertError."""
        return self.post(message, thread_id).ts

    def post(
        self,
        message: Message,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Posted:
        """Post ``message`` (into ``thread_id``'s thread when given) with message ``metadata``
        (see ``alert_metadata``); return its ``ts`` and channel id. Raises AlertError."""
        resp = self._call(
            "chat.postMessage",
            channel=self._channel,
            text=message.text,
            blocks=message.blocks,
            thread_ts=thread_id,
            unfurl_links=False,
            unfurl_media=False,
            metadata=metadata,
        )
        ts, channel = resp.get("ts"), resp.get("channel")
        if channel:
            self._channel_id = str(channel)
        return Posted(str(ts) if ts else None, str(channel) if channel else None)

    def find(
        self, channel_id: str, send_key: str, oldest: dt.datetime, thread_id: str | None = None
    ) -> Posted | None:
        """The alert whose metadata carries ``send_key``, posted in ``channel_id`` (in
        ``thread_id``'s thread when given) since ``oldest``; None when that history holds no
        such message. Raises AlertError when it cannot tell: Slack refused the lookup
        (``missing_scope`` sets ``needed_scope``: ``channels:history`` or ``groups:history``),
        was unreachable or rate limited, or there were more than LOOKUP_MAX_PAGES pages."""
        method = "conversations.replies" if thread_id else "conversations.history"
        params: dict[str, Any] = {
            "channel": channel_id,
            "ts": thread_id,
            "oldest": f"{oldest.timestamp():.6f}",
            "limit": LOOKUP_PAGE,
            "include_all_metadata": True,
        }
        for _ in range(LOOKUP_MAX_PAGES):
            resp = self._call(method, form=True, **params)
            for msg in resp.get("messages") or []:
                meta = msg.get("metadata") if isinstance(msg, dict) else None
                if not isinstance(meta, dict) or meta.get("event_type") != METADATA_EVENT_TYPE:
                    continue
                payload = meta.get("event_payload")
                if (
                    isinstance(payload, dict)
                    and payload.get("send_key") == send_key
                    and msg.get("ts")
                ):
                    return Posted(str(msg["ts"]), channel_id)
            if not resp.get("has_more"):
                return None
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
            params["cursor"] = cursor
        raise errors.AlertError(
            f"slack {method}: could not read the history to the end "
            f"({LOOKUP_MAX_PAGES} pages of {LOOKUP_PAGE})",
            channel=CHANNEL,
            temporary=True,
        )

    def update(self, channel: str, ts: str, message: Message) -> None:
        """Replace the message ``ts`` in ``channel`` (``chat.update``). Raises AlertError."""
        self._call("chat.update", channel=channel, ts=ts, text=message.text, blocks=message.blocks)

    def ephemeral(self, channel: str, user: str, text: str) -> None:
        """Show ``text`` to ``user`` only (``chat.postEphemeral``). Raises AlertError."""
        self._call("chat.postEphemeral", channel=channel, user=user, text=text)

    def _call(self, method: str, *, form: bool = False, **params: Any) -> Any:
        client = web.WebClient(
            token=self._token.reveal(),
            base_url=self._base_url,
            timeout=max(1, int(self._timeout)),
            logger=_sdk_log,
            retry_handlers=[],
        )
        secret = self._token.reveal()
        given = {k: v for k, v in params.items() if v is not None}
        try:
            if form:  # the read methods, as slack-sdk's own conversations_history sends them
                return client.api_call(method, http_verb="GET", params=given)
            return client.api_call(method, json=given)
        except slack_errors.SlackApiError as exc:
            r = exc.response
            data = r.data if isinstance(r.data, dict) else {}
            error = str(data.get("error") or "") or str(r.data or "")[:200]
            status = int(r.status_code)
            if status == 200 and error in _TEMPORARY_API_ERRORS:
                status = 503
            needed = data.get("needed") if error == "missing_scope" else None
            raise _refused(
                method, status, error, r.headers or {}, secret, needed=needed and str(needed)
            ) from None
        except Exception as exc:
            raise _unreachable(method, exc, secret) from None


def _header_value(headers: Any, name: str) -> str | None:
    for key, value in dict(headers).items():
        if str(key).lower() == name.lower():
            return str(value[0] if isinstance(value, list) and value else value)
    return None


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _refused(
    what: str, status: int, body: str, headers: Any, secret: str, *, needed: str | None = None
) -> errors.AlertError:
    detail = _redact(errors.truncate(body or "no body", 200), secret)
    if needed:
        detail += f" (needed: {errors.truncate(needed, 100)})"
    if status == 429:
        retry_after = retry.parse_retry_after(_header_value(headers, "Retry-After"))
        return errors.AlertError(
            f"slack {what}: rate limited (429, retry after {retry_after}s)",
            channel=CHANNEL,
            status=429,
            temporary=True,
            retry_after=retry_after,
        )
    temporary = status >= 500 or status == 408
    return errors.AlertError(
        f"slack {what}: HTTP {status}: {detail}",
        channel=CHANNEL,
        status=status,
        temporary=temporary,
        needed_scope=needed or None,
    )


def _unreachable(what: str, exc: BaseException, secret: str) -> errors.AlertError:
    reason = getattr(exc, "reason", None) or exc
    text = _redact(errors.truncate(f"{type(exc).__name__}: {reason}", 200), secret)
    return errors.AlertError(f"slack {what} unreachable: {text}", channel=CHANNEL, temporary=True)
