"""Slack: sending through slack-sdk (Incoming Webhook or bot token).

What is sent is rendered by ``alerts.render`` (a ``render.Message``). Sending translates
slack-sdk's outcomes into ``errors.AlertError`` once, here: 429 (with ``Retry-After``), 5xx and
connection errors are temporary; anything else (``invalid_auth``, ``channel_not_found``, a 404
from a deleted webhook) is permanent. slack-sdk's own retry handlers are switched off: the outbox
worker owns the one retry loop. The webhook URL and the token never appear in an error, a log
line or a stored reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from typing import Any, Protocol

from slack_sdk import errors as slack_errors
from slack_sdk import web, webhook

import watchdog
from watchdog import config, errors, retry
from watchdog.alerts import render

# slack-sdk appends its own "Python/x slackclient/y OS/z": the product named first is ours
USER_AGENT_PREFIX = f"tag-watchdog/{watchdog.__version__}"

CHANNEL = "slack"
DEFAULT_BASE_URL = "https://slack.com/api/"

# slack-sdk logs request URLs and headers at DEBUG (the webhook URL is the secret itself) and
# errors of its own: it gets a logger of its own that says nothing.
_sdk_log = logging.getLogger("watchdog.alerts.slack_sdk")
_sdk_log.disabled = True  # we log (and redact) every outcome ourselves

# Web API errors worth trying again; every other ``error`` is a permanent refusal.
_TEMPORARY_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


# --- sending -------------------------------------------------------------------------------------


class Sender(Protocol):
    """Delivers a message on one channel; returns the channel's message id (for threads)."""

    name: str

    def send(self, message: render.Message, thread_id: str | None = None) -> str | None: ...


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

    def send(self, message: render.Message, thread_id: str | None = None) -> str | None:
        """Post ``message``; return None (webhooks give no message id). Raises AlertError."""
        client = webhook.WebhookClient(
            self._url.reveal(),
            timeout=max(1, int(self._timeout)),
            logger=_sdk_log,
            retry_handlers=[],
            user_agent_prefix=USER_AGENT_PREFIX,
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

    def send(self, message: render.Message, thread_id: str | None = None) -> str | None:
        """Post ``message`` (into ``thread_id``'s thread when given); return its ``ts``.
        Raises AlertError."""
        return self.post(message, thread_id).ts

    def post(
        self,
        message: render.Message,
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

    def update(self, channel: str, ts: str, message: render.Message) -> None:
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
            user_agent_prefix=USER_AGENT_PREFIX,
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
