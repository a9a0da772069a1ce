"""Slack interactivity: the Restore / Accept buttons of an alert, answered at ``/slack/actions``.

Every request is checked before anything else is read from it: Slack's signature (an HMAC of the
raw body with ``slack.signing_secret``, through slack-sdk's ``SignatureVerifier``) and its
timestamp (at most 5 minutes off, so a captured request cannot be replayed later); then the Slack
user against ``slack.allowed_users``. A refusal changes nothing and is logged
(``slack_action_refused reason=...``).

A tap acts on exactly the digest its alert showed, or not at all: Restore only while that digest is
still the tag's record, Accept only while the tag still answers that digest (whatever moved since
was never shown to the person tapping). The action runs through the same code as the CLI and the
API, is recorded as an event naming the person (actor ``slack:U123 (alice)``) and alerted like any
other event.

Slack wants an answer within 3 seconds, and a restore can take longer: the request is answered at
once and the action runs in the background; when it is done the alert's buttons are replaced by
the outcome (``chat.update``). Should the daemon die before that update, the event and its alert
still tell the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from slack_sdk import signature
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from watchdog import api, config, errors, models, restore
from watchdog.alerts import slack
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.slack_actions")

PATH = "/slack/actions"
MAX_BODY_BYTES = 256 * 1024  # the payload repeats the whole message; alerts stay far below this
MAX_AGE = 300.0  # seconds: Slack's own rule for a request timestamp
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")

Spawn = Callable[[Coroutine[Any, Any, None]], None]
Clock = Callable[[], float]


class Observer(Protocol):
    """Where taps are counted (watchdog.metrics.Metrics)."""

    def on_slack_action(self, action: str, result: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Tap:
    """One button press, as Slack reported it (after the signature was checked)."""

    action: str  # slack.ACTION_RESTORE | slack.ACTION_ACCEPT
    user: str  # Slack user id
    user_name: str  # Slack user name ("" when not given), for the record only
    ref: models.ImageRef
    digest: str  # the digest the alert showed on this button
    event_id: int | None
    channel: str | None
    message_ts: str | None

    @property
    def actor(self) -> str:
        return f"slack:{self.user}" + (f" ({self.user_name})" if self.user_name else "")

    @property
    def verb(self) -> str:
        return "restore" if self.action == slack.ACTION_RESTORE else "accept"


class _Clock(signature.Clock):
    def __init__(self, now: Clock) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


def check_signature(
    secret: config.Secret,
    body: bytes,
    timestamp: str | None,
    sig: str | None,
    *,
    now: Clock = time.time,
) -> str | None:
    """None when Slack signed ``body`` at ``timestamp`` (at most 5 minutes ago or ahead), else
    why not: ``unsigned``, ``bad_signature`` or ``stale`` (signed right, but too old)."""
    if not timestamp or not sig:
        return "unsigned"
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return "bad_signature"
    if not sig.isascii() or len(sig) > 200:  # compare_digest refuses non-ASCII str with a TypeError
        return "bad_signature"
    verifier = signature.SignatureVerifier(secret.reveal(), clock=_Clock(now))
    if verifier.is_valid(body=body, timestamp=timestamp, signature=sig):
        return None
    if abs(now() - int(timestamp)) > MAX_AGE:
        return "stale"
    return "bad_signature"


def parse_tap(body: bytes) -> Tap:
    """The button press in a ``block_actions`` request body (``payload=<json>``, form-encoded).
    Raises UsageError when it is not one of our buttons."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=20)
        doc = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, RecursionError):
        raise errors.UsageError("expected a form field payload=<JSON>") from None
    if not isinstance(doc, dict) or doc.get("type") != "block_actions":
        raise errors.UsageError("not a block_actions request")
    user = _dict(doc.get("user"))
    user_id = user.get("id")
    if not isinstance(user_id, str) or not user_id:
        raise errors.UsageError("the request names no Slack user")
    actions = doc.get("actions")
    action = _dict(actions[0]) if isinstance(actions, list) and actions else {}
    action_id = action.get("action_id")
    if action_id not in (slack.ACTION_RESTORE, slack.ACTION_ACCEPT):
        raise errors.UsageError(f"unknown action {str(action_id)[:60]!r}")
    try:
        value = json.loads(str(action.get("value") or ""))
        ref = models.ImageRef.parse(str(value["ref"]), require_tag=True)
        digest = models.check_digest(str(value["digest"]))
    except (ValueError, KeyError, TypeError, RecursionError, errors.InvalidReference) as exc:
        raise errors.UsageError(f"the button's value is not one of ours: {exc}") from None
    event_id = value.get("event")
    container = _dict(doc.get("container"))
    channel = container.get("channel_id") or _dict(doc.get("channel")).get("id")
    message_ts = container.get("message_ts") or _dict(doc.get("message")).get("ts")
    name = user.get("username") or user.get("name") or ""
    return Tap(
        action=str(action_id),
        user=user_id,
        user_name=_NAME_RE.sub("", str(name))[:64],
        ref=ref,
        digest=digest,
        event_id=event_id if isinstance(event_id, int) else None,
        channel=channel if isinstance(channel, str) else None,
        message_ts=message_ts if isinstance(message_ts, str) else None,
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Responder:
    """Performs allowed taps and reports back in Slack."""

    def __init__(
        self,
        settings: config.Settings,
        store: store_repo.Store,
        actions: api.Actions,
        sender: slack.BotSender,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.actions = actions
        self.sender = sender
        self.observer = observer
        self._busy: set[tuple[str | None, str | None, str]] = set()

    async def perform(self, tap: Tap) -> None:
        """Do what ``tap`` asks, then replace the alert's buttons with the outcome."""
        key = (tap.channel, tap.message_ts, tap.action)
        if key in self._busy:  # a double tap while the first one is still running
            return
        self._busy.add(key)
        try:
            result, outcome = await self._act(tap)
            if self.observer is not None:
                self.observer.on_slack_action(tap.verb, result)
            log.info(
                "slack_action_done action=%s ref=%s by=%s result=%s",
                tap.verb,
                f"{tap.ref.name}:{tap.ref.tag}",
                tap.actor,
                result,
            )
            await self._report(tap, outcome)
        finally:
            self._busy.discard(key)

    async def _act(self, tap: Tap) -> tuple[str, str]:
        assert tap.ref.tag is not None
        ref_text = slack.escape(f"{tap.ref.name}:{tap.ref.tag}")
        who = slack.actor_mrkdwn(tap.actor)
        short = models.short_digest(tap.digest)
        try:
            record = await asyncio.to_thread(self.store.get_tag, tap.ref.name, tap.ref.tag)
            if record is None:
                raise errors.UsageError(f"{tap.ref.name}:{tap.ref.tag} was never recorded")
            if tap.action == slack.ACTION_RESTORE:
                if record.recorded_digest != tap.digest:
                    return "refused", (
                        f":warning: {who} tapped Restore, but the record of `{ref_text}` changed "
                        f"since this alert (now `{models.short_digest(record.recorded_digest)}`): "
                        "nothing was restored. Use `tag-watchdog restore --digest` if you mean it."
                    )
                done = await self.actions.restore(tap.ref, tap.digest, False, tap.actor)
                assert isinstance(done, restore.Outcome)
                if done.restored:
                    return "restored", (
                        f":white_check_mark: *Restored* by {who}: `{ref_text}` answers "
                        f"`{short}` again."
                    )
                return "failed", (
                    f":x: {who} tapped Restore and it *failed*: "
                    f"{slack.escape(done.reason or 'unknown reason')}. The tag was left as it was."
                )
            await self.actions.accept(tap.ref, "accepted from Slack", tap.actor, tap.digest)
            return "accepted", (
                f":ballot_box_with_check: *Accepted* by {who}: `{short}` is now the recorded "
                f"digest of `{ref_text}`."
            )
        except errors.UsageError as exc:
            return "refused", f":warning: {who}: nothing was done: {slack.escape(str(exc))}"
        except errors.WatchdogError as exc:
            return "error", (
                f":x: {who}: could not complete ({slack.escape(str(exc))}); nothing was changed."
            )

    async def _report(self, tap: Tap, outcome: str) -> None:
        if tap.channel is None or tap.message_ts is None:
            return
        assert tap.ref.tag is not None
        event = None
        if tap.event_id is not None:
            try:
                history = await asyncio.to_thread(self.store.history, tap.ref.name, tap.ref.tag)
            except errors.StoreError:
                history = []
            event = next((e for e in history if e.id == tap.event_id), None)
        if event is not None:
            on_move = next(
                (w.on_move for w in self.settings.watches if w.name == event.repository), None
            )
            message = slack.render_outcome(event, outcome, slack.Context(on_move=on_move))
        else:
            message = slack.Message(text=outcome, blocks=[_section(outcome)])
        try:
            await asyncio.to_thread(self.sender.update, tap.channel, tap.message_ts, message)
        except errors.AlertError as exc:
            log.warning("slack_update_failed ref=%s error=%r", tap.ref.name, str(exc))

    async def tell(self, tap: Tap, text: str) -> None:
        """Show ``text`` to the person who tapped, and to nobody else."""
        if tap.channel is None:
            return
        try:
            await asyncio.to_thread(self.sender.ephemeral, tap.channel, tap.user, text)
        except errors.AlertError as exc:
            log.warning("slack_ephemeral_failed error=%r", str(exc))


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": slack.truncate_mrkdwn(text)}}


def routes(
    settings: config.Settings,
    store: store_repo.Store | None,
    actions: api.Actions | None,
    *,
    spawn: Spawn,
    observer: Observer | None = None,
    clock: Clock = time.time,
) -> list[Route]:
    """The ``/slack/actions`` route. Refuses every request (403) unless Slack buttons are
    configured (``slack.token``, ``slack.signing_secret``, ``slack.allowed_users``)."""
    s = settings.slack
    responder: Responder | None = None
    if s.buttons and store is not None and actions is not None:
        assert s.token is not None and s.channel is not None
        responder = Responder(
            settings, store, actions, slack.BotSender(s.token, s.channel, s.base_url), observer
        )

    def refused(action: str, reason: str) -> None:
        if observer is not None:
            observer.on_slack_action(action, reason)

    async def slack_actions(request: Request) -> Response:
        if responder is None or s.signing_secret is None:
            return JSONResponse(
                {
                    "error": "Slack buttons need slack.token, slack.signing_secret and "
                    "slack.allowed_users"
                },
                status_code=403,
            )
        client = request.client.host if request.client else "unknown"
        try:
            body = await _read_limited(request)
        except errors.UsageError as exc:
            log.warning("slack_action_refused reason=too_large client=%s", client)
            refused("unknown", "malformed")
            return JSONResponse({"error": str(exc)}, status_code=413)
        why = check_signature(
            s.signing_secret,
            body,
            request.headers.get("x-slack-request-timestamp"),
            request.headers.get("x-slack-signature"),
            now=clock,
        )
        if why is not None:
            log.warning("slack_action_refused reason=%s client=%s", why, client)
            refused("unknown", why)
            return JSONResponse({"error": f"request refused: {why}"}, status_code=401)
        try:
            tap = parse_tap(body)
        except errors.UsageError as exc:
            log.warning(
                "slack_action_refused reason=malformed client=%s error=%r", client, str(exc)
            )
            refused("unknown", "malformed")
            return JSONResponse({"error": str(exc)}, status_code=400)
        ref = f"{tap.ref.name}:{tap.ref.tag}"
        if tap.user not in s.allowed_users:
            log.warning(
                "slack_action_refused reason=not_allowed user=%s action=%s ref=%s",
                tap.user,
                tap.verb,
                ref,
            )
            refused(tap.verb, "not_allowed")
            spawn(
                responder.tell(
                    tap,
                    f"You are not on tag-watchdog's `slack.allowed_users` list: nothing was "
                    f"done to `{slack.escape(ref)}`.",
                )
            )
            return Response(status_code=200)
        log.info("slack_action action=%s ref=%s by=%s", tap.verb, ref, tap.actor)
        spawn(responder.perform(tap))
        return Response(status_code=200)

    return [Route(PATH, slack_actions, methods=["POST"])]


async def _read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise errors.UsageError(f"request body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise errors.UsageError(f"request body over {MAX_BODY_BYTES} bytes")
    return bytes(body)
