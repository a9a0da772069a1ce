"""Slack interactivity: the Restore / Accept buttons of an alert, answered at ``/slack/actions``.

Every request is checked before anything else is read from it: Slack's signature (the v0 HMAC
of the raw body with ``slack.signing_secret``) and its timestamp (at most 5 minutes off, so a
captured request cannot be replayed later; within those minutes a signature is taken once); then
the Slack user against ``slack.allowed_users``. A refusal changes nothing and is logged
(``slack_action_refused reason=...``).

A tap acts on exactly the digest its alert showed, or not at all: Restore only while that digest is
still the tag's record, Accept only while the tag still answers that digest (whatever moved since
was never shown to the person tapping). The action runs through watchdog.actions, as the CLI's and
the API's do, is recorded as an event naming the person (actor ``slack:U123 (alice)``) and alerted like any
other event.

Slack wants an answer within 3 seconds, and a restore can take longer: the request is answered at
once and the action runs in the background; when it is done the alert's buttons are replaced by
the outcome (``chat.update``). Should the daemon die before that update, the event and its alert
still tell the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from watchdog import actions, config, errors, models, safejson
from watchdog.alerts import answers, render, slack
from watchdog.alerts import incident as incident_view
from watchdog.store import repo as store_repo
from watchdog.web import common, taps

# the logger of this endpoint since before the web package: log pipelines filter on it
log = logging.getLogger("watchdog.slack_actions")

PATH = "/slack/actions"
MAX_BODY_BYTES = 256 * 1024  # the payload repeats the whole message; alerts stay far below this
MAX_AGE = 300.0  # seconds: Slack's own rule for a request timestamp
# A signed request is taken once: its signature is remembered for longer than a timestamp stays
# acceptable (either side of now), so a replay within the window is refused.
REMEMBER = 2 * MAX_AGE + 60.0
MAX_REMEMBERED = 10_000
TELL_TIMEOUT = 2.0  # seconds: an ephemeral answer sent before the HTTP answer (Slack's 3 s rule)
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")
_NUMBERED_RE = re.compile(r"tag_watchdog\.(restore|accept)\.[0-9]{1,3}")

# Runs an action in the background; False when the daemon is shutting down (the coroutine is
# closed unrun).
Spawn = Callable[[Coroutine[Any, Any, None], str], bool]
Clock = Callable[[], float]


class Observer(Protocol):
    """Where taps are counted (watchdog.metrics.Metrics)."""

    def on_slack_action(self, action: str, result: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Tap:
    """One button press, as Slack reported it (after the signature was checked)."""

    action: str  # render.ACTION_RESTORE | render.ACTION_ACCEPT
    user: str  # Slack user id
    user_name: str  # Slack user name ("" when not given), for the record only
    ref: models.ImageRef
    digest: str  # the digest the alert showed on this button
    event_id: int | None
    channel: str | None
    message_ts: str | None
    incident_id: int | None = None  # the button sat in an incident's message

    @property
    def actor(self) -> str:
        return f"slack:{self.user}" + (f" ({self.user_name})" if self.user_name else "")

    @property
    def shown(self) -> str:
        """The tag as a person reads it: ``<repository>:<tag>``."""
        return f"{self.ref.name}:{self.ref.tag}"

    @property
    def verb(self) -> str:
        return "restore" if self.action == render.ACTION_RESTORE else "accept"


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
    # The HMAC first: a forged request is `bad_signature` whatever its timestamp says. Slack's
    # v0 scheme, over the raw bytes (slack-sdk's helper decodes the body as UTF-8 first, and a
    # body that is not UTF-8 would raise there).
    mac = hmac.new(secret.reveal().encode(), b"v0:" + timestamp.encode() + b":" + body, "sha256")
    if not hmac.compare_digest(f"v0={mac.hexdigest()}".encode(), sig.encode()):
        return "bad_signature"
    if abs(now() - int(timestamp)) > MAX_AGE:
        return "stale"
    return None


class Replays:
    """The signatures of the requests taken in the last ``REMEMBER`` seconds: Slack signs each
    request afresh, so the same signature twice is a replay (or a retry) of one tap."""

    def __init__(self, now: Clock = time.monotonic) -> None:
        self._now = now
        self._seen: dict[str, float] = {}  # signature -> when it may be forgotten (insertion order)

    def take(self, sig: str) -> str | None:
        """None the first time ``sig`` is seen within the window (and remember it); else why
        not: ``replayed``, or ``overloaded`` when MAX_REMEMBERED signatures are still live (the
        window is never shortened to make room: a replay would then pass)."""
        now = self._now()
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until > now:
                break
            del self._seen[oldest]
        if sig in self._seen:
            return "replayed"
        if len(self._seen) >= MAX_REMEMBERED:
            return "overloaded"
        self._seen[sig] = now + REMEMBER
        return None


def parse_tap(body: bytes) -> Tap | taps.IncidentTap:
    """The button press in a ``block_actions`` request body (``payload=<json>``, form-encoded):
    a tag's Restore or Accept, or an incident's Restore all or Accept all. Raises UsageError
    when it is not one of our buttons."""
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=20)
        doc = safejson.loads(form["payload"][0])
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
    if isinstance(action_id, str) and _NUMBERED_RE.fullmatch(action_id):
        action_id = action_id.rsplit(".", 1)[0]  # a tag's button in an incident's message
    if action_id not in (render.ACTION_RESTORE, render.ACTION_ACCEPT, *taps.ACTIONS):
        raise errors.UsageError(f"unknown action {str(action_id)[:60]!r}")
    container = _dict(doc.get("container"))
    channel = container.get("channel_id") or _dict(doc.get("channel")).get("id")
    message_ts = container.get("message_ts") or _dict(doc.get("message")).get("ts")
    channel = channel if isinstance(channel, str) else None
    message_ts = message_ts if isinstance(message_ts, str) else None
    name = _NAME_RE.sub("", str(user.get("username") or user.get("name") or ""))[:64]
    if action_id in taps.ACTIONS:
        try:
            incident_id, shown = taps.parse_value(safejson.loads(str(action.get("value") or "")))
        except (ValueError, RecursionError) as exc:
            raise errors.UsageError(f"the button's value is not one of ours: {exc}") from None
        return taps.IncidentTap(
            action=str(action_id),
            user=user_id,
            user_name=name,
            incident_id=incident_id,
            seen=shown,
            channel=channel,
            message_ts=message_ts,
        )
    try:
        value = safejson.loads(str(action.get("value") or ""))
        ref = models.ImageRef.parse(str(value["ref"]), require_tag=True)
        digest = models.check_digest(str(value["digest"]))
    except (ValueError, KeyError, TypeError, RecursionError, errors.InvalidReference) as exc:
        raise errors.UsageError(f"the button's value is not one of ours: {exc}") from None
    event_id, incident_id = value.get("event"), value.get("incident")
    return Tap(
        action=str(action_id),
        user=user_id,
        user_name=name,
        ref=ref,
        digest=digest,
        event_id=event_id if isinstance(event_id, int) else None,
        channel=channel,
        message_ts=message_ts,
        incident_id=incident_id if isinstance(incident_id, int) else None,
    )


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclasses.dataclass(frozen=True)
class _Result:
    result: str  # the metric's result label: restored, failed, accepted, refused, already, error
    text: str  # mrkdwn, escaped
    update: bool  # replace the alert's buttons with ``text``; else show it to the tapper only


class Responder:
    """Performs allowed taps and reports back in Slack."""

    def __init__(
        self,
        settings: config.Settings,
        store: store_repo.Store,
        actions_: actions.Actions,
        sender: slack.BotSender,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.actions = actions_
        self.sender = sender
        self.observer = observer
        self._busy: set[tuple[str, str]] = set()  # tags with a tap being acted on

    def claim(self, tap: Tap | taps.IncidentTap) -> bool:
        """Reserve ``tap``'s tag for it: False while another tap on that tag (Restore or
        Accept, from this alert or another) is still being acted on."""
        key = _tag_key(tap)
        if key in self._busy:
            return False
        self._busy.add(key)
        return True

    def release(self, tap: Tap | taps.IncidentTap) -> None:
        self._busy.discard(_tag_key(tap))

    async def perform(self, tap: Tap | taps.IncidentTap) -> None:
        """Do what ``tap`` asks (its tag claimed by ``claim``), then replace the alert's buttons
        with the outcome."""
        if isinstance(tap, taps.IncidentTap):
            await self.perform_all(tap)
            return
        progress = False
        try:
            result = await self._precheck(tap)
            if result is None:
                if tap.action == render.ACTION_RESTORE:
                    # a restore can take a while: say so at once (the buttons stay, so nothing is
                    # lost if this never finishes; a second tap meanwhile is refused as busy)
                    progress = await self._report(
                        tap, answers.restoring_text(tap.actor), progress=True
                    )
                try:
                    result = await self._act(tap)
                except Exception:
                    # a bug, not an expected failure: say so rather than leave "Restoring…"
                    log.exception("slack_action_crashed action=%s ref=%s", tap.verb, tap.shown)
                    result = _Result(
                        "error", answers.could_not("an internal error, see the log"), False
                    )
            if self.observer is not None:
                self.observer.on_slack_action(tap.verb, result.result)
            log.info(
                "slack_action_done action=%s ref=%s by=%s result=%s",
                tap.verb,
                tap.shown,
                tap.actor,
                result.result,
            )
            if result.update:
                await self._report(tap, result.text)
            else:
                if progress:
                    await self._report(tap, None)  # the buttons back: nothing was done
                await self.tell(tap, result.text)
        except asyncio.CancelledError:
            # shutdown's grace period ran out: what was done is in the tag's history
            log.warning(
                "slack_action_cancelled action=%s ref=%s by=%s reason=shutdown",
                tap.verb,
                tap.shown,
                tap.actor,
            )
            raise
        finally:
            self.release(tap)

    async def perform_all(self, tap: taps.IncidentTap) -> None:
        """Restore all / Accept all (``web.taps``), then redraw the incident's message with the
        outcome in place of its buttons."""
        try:
            await self._redraw(tap, answers.restoring_text(tap.actor), progress=True)
            try:
                result, text = await taps.act(tap, self.store, self.actions)
            except Exception:
                log.exception("slack_action_crashed action=%s ref=%s", tap.verb, tap.shown)
                result, text = "error", answers.could_not("an internal error, see the log")
            if self.observer is not None:
                self.observer.on_slack_action(tap.verb, result)
            log.info(
                "slack_action_done action=%s ref=%s by=%s result=%s",
                tap.verb,
                tap.shown,
                tap.actor,
                result,
            )
            if result in ("already", "error"):
                await self._redraw(tap, None)
                await self.tell(tap, text)
            else:
                await self._redraw(tap, text)
        finally:
            self.release(tap)

    async def _redraw(
        self, tap: Tap | taps.IncidentTap, outcome: str | None, *, progress: bool = False
    ) -> bool:
        """Redraw the incident message ``tap`` came from as the incident stands now, with
        ``outcome`` in place of its buttons (None: with its buttons; ``progress``: above them).
        True when Slack took the update."""
        if tap.channel is None or tap.message_ts is None or tap.incident_id is None:
            return False
        try:
            incident = await asyncio.to_thread(self.store.incidents.get, tap.incident_id)
        except errors.StoreError:
            return False
        if incident is None:
            return False
        contexts = incident_view.contexts(incident, self.settings)
        if outcome is None or progress or isinstance(tap, Tap):
            # a tag's own button: the other tags keep theirs, the outcome shown above them
            message = incident_view.render_incident(incident, contexts)
            if outcome is not None:
                message = answers.with_progress(message, outcome)
        else:
            message = incident_view.render_incident(incident, contexts, outcome=outcome)
        try:
            await asyncio.to_thread(self.sender.update, tap.channel, tap.message_ts, message)
        except errors.AlertError as exc:
            log.warning("slack_update_failed ref=%s error=%r", tap.incident_id, str(exc))
            return False
        return True

    async def _precheck(self, tap: Tap) -> _Result | None:
        """The answer when ``tap`` must not (or need not) act; None when it may."""
        assert tap.ref.tag is not None
        try:
            record = await asyncio.to_thread(self.store.get_tag, tap.ref.name, tap.ref.tag)
        except errors.StoreError as exc:
            return _Result("error", answers.could_not(str(exc)), update=False)
        if record is None:
            return _Result(
                "refused", answers.never_recorded_text(tap.actor, tap.shown), update=True
            )
        settled = record.state is models.TagState.OK and record.recorded_digest == tap.digest
        if settled and record.current_digest == tap.digest:
            # done already (this tap's twin, a replay after a restart, or someone else): the
            # message keeps the outcome it shows
            done = "restored" if tap.action == render.ACTION_RESTORE else "accepted"
            return _Result(
                "already", answers.already_text(tap.shown, tap.digest, done), update=False
            )
        if tap.action == render.ACTION_RESTORE and record.recorded_digest != tap.digest:
            text = answers.record_changed_text(
                tap.actor,
                tap.shown,
                record.recorded_digest,
                tap.digest,
                render.config_path(self.settings),
            )
            return _Result("refused", text, update=True)
        return None

    async def _act(self, tap: Tap) -> _Result:
        try:
            if tap.action == render.ACTION_RESTORE:
                done = await self.actions.restore(
                    tap.ref, tap.digest, tap.actor, still_recorded=True
                )
                if done.restored:
                    text = answers.restored_text(tap.actor, tap.shown, tap.digest)
                    return _Result("restored", text, update=True)
                return _Result(
                    "failed", answers.restore_failed_text(tap.actor, done.reason), update=True
                )
            await self.actions.accept(tap.ref, "accepted from Slack", tap.actor, tap.digest)
            return _Result(
                "accepted", answers.accepted_text(tap.actor, tap.shown, tap.digest), True
            )
        except actions.AlreadyDone as exc:
            # someone was quicker (an accept, a restore, a check): the message keeps its outcome
            return _Result("already", answers.nothing_to_do_text(str(exc)), update=False)
        except errors.UsageError as exc:
            return _Result("refused", answers.refused_text(tap.actor, str(exc)), update=True)
        except errors.WatchdogError as exc:
            # nothing changed and the same tap may work in a minute: the buttons stay
            return _Result("error", answers.could_not(str(exc)), update=False)

    async def _report(self, tap: Tap, outcome: str | None, *, progress: bool = False) -> bool:
        """Show ``outcome`` in the alert in place of its buttons (None: the alert as it was
        sent, buttons included; ``progress``: above its buttons, which stay). True when Slack
        took the update."""
        if tap.channel is None or tap.message_ts is None:
            return False
        if tap.incident_id is not None:  # a tag's button in an incident's message
            return await self._redraw(tap, outcome, progress=progress)
        assert tap.ref.tag is not None
        event = None
        first_seen = None
        try:
            record = await asyncio.to_thread(self.store.get_tag, tap.ref.name, tap.ref.tag)
            first_seen = record.first_seen if record is not None else None
            if tap.event_id is not None:
                history = await asyncio.to_thread(self.store.history, tap.ref.name, tap.ref.tag)
                event = next((e for e in history if e.id == tap.event_id), None)
        except errors.StoreError:
            pass
        if event is not None:
            context = render.context_for(self.settings, event.repository, first_seen=first_seen)
            if outcome is None or progress:
                message = render.render_event(event, dataclasses.replace(context, buttons=True))
                if outcome is not None:
                    message = answers.with_progress(message, outcome)
            else:
                message = render.render_outcome(event, outcome, context)
        elif outcome is None or progress:
            return False  # the alert cannot be rebuilt: leave it as it is
        else:
            message = answers.outcome_message(outcome)
        try:
            await asyncio.to_thread(self.sender.update, tap.channel, tap.message_ts, message)
        except errors.AlertError as exc:
            log.warning("slack_update_failed ref=%s error=%r", tap.ref.name, str(exc))
            return False
        return True

    async def tell(self, tap: Tap | taps.IncidentTap, text: str) -> None:
        """Show ``text`` to the person who tapped, and to nobody else."""
        if tap.channel is None:
            return
        try:
            await asyncio.to_thread(self.sender.ephemeral, tap.channel, tap.user, text)
        except errors.AlertError as exc:
            log.warning("slack_ephemeral_failed error=%r", str(exc))


def _tag_key(tap: Tap | taps.IncidentTap) -> tuple[str, str]:
    if isinstance(tap, taps.IncidentTap):
        return ("incident", str(tap.incident_id))
    return (tap.ref.name, tap.ref.tag or "")


def routes(
    settings: config.Settings,
    store: store_repo.Store | None,
    actions_: actions.Actions | None,
    *,
    spawn: Spawn,
    observer: Observer | None = None,
    clock: Clock = time.time,
) -> list[Route]:
    """The ``/slack/actions`` route. Refuses every request (403) unless Slack buttons are
    configured (``slack.token``, ``slack.signing_secret``, ``slack.allowed_users``)."""
    s = settings.slack
    responder: Responder | None = None
    if s.buttons and store is not None and actions_ is not None:
        assert s.token is not None and s.channel is not None
        responder = Responder(
            settings, store, actions_, slack.BotSender(s.token, s.channel, s.base_url), observer
        )
    endpoint = _Endpoint(settings, responder, spawn=spawn, observer=observer, clock=clock)
    return [Route(PATH, endpoint.answer, methods=["POST"])]


class _Endpoint:
    """``/slack/actions``: admits a request (size, signature, replay, one of our buttons, an
    allowed user, no other tap on the tag under way), answers it at once and has the Responder
    act on it in the background."""

    def __init__(
        self,
        settings: config.Settings,
        responder: Responder | None,
        *,
        spawn: Spawn,
        observer: Observer | None,
        clock: Clock,
    ) -> None:
        self.secret = settings.slack.signing_secret
        self.allowed = settings.slack.allowed_users
        self.responder = responder
        self.spawn = spawn
        self.observer = observer
        self.clock = clock
        self.replays = Replays()

    def _refused(self, action: str, reason: str) -> None:
        if self.observer is not None:
            self.observer.on_slack_action(action, reason)

    def _refuse(
        self, tap: Tap | taps.IncidentTap, reason: str, level: int = logging.WARNING
    ) -> None:
        event = "slack_action_refused reason=%s action=%s ref=%s by=%s"
        log.log(level, event, reason, tap.verb, tap.shown, tap.actor)
        self._refused(tap.verb, reason)

    async def answer(self, request: Request) -> Response:
        if self.responder is None or self.secret is None:
            return common.error(
                403,
                "Slack buttons need slack.token, slack.signing_secret and slack.allowed_users",
            )
        tap = await self._admit(request, self.secret)
        if isinstance(tap, Response):
            return tap
        return await self._dispatch(tap, self.responder)

    async def _admit(
        self, request: Request, secret: config.Secret
    ) -> Tap | taps.IncidentTap | Response:
        """The tap in ``request`` when it is signed, fresh, taken once and one of our buttons;
        else the answer that refuses it."""
        client = common.client_host(request)
        try:
            body = await common.read_body(request, MAX_BODY_BYTES)
        except common.ClientGone:
            log.info("slack_action_dropped reason=client_gone client=%s", client)
            return Response(status_code=400)
        except common.BodyTooLarge as exc:
            log.warning("slack_action_refused reason=too_large client=%s", client)
            self._refused("unknown", "malformed")
            return common.answer_to(exc)
        sig = request.headers.get("x-slack-signature")
        timestamp = request.headers.get("x-slack-request-timestamp")
        why = check_signature(secret, body, timestamp, sig, now=self.clock)
        if why is None and sig is not None:
            why = self.replays.take(sig)
        if why == "overloaded":
            log.warning("slack_action_refused reason=overloaded client=%s", client)
            self._refused("unknown", why)
            return common.error(503, "too many taps: try again in a minute")
        if why is not None:
            log.warning("slack_action_refused reason=%s client=%s", why, client)
            self._refused("unknown", why)
            return common.error(401, f"request refused: {why}")
        try:
            return parse_tap(body)
        except errors.UsageError as exc:
            log.warning(
                "slack_action_refused reason=malformed client=%s error=%r", client, str(exc)
            )
            self._refused("unknown", "malformed")
            return common.answer_to(exc)

    async def _dispatch(self, tap: Tap | taps.IncidentTap, responder: Responder) -> Response:
        """Start acting on ``tap`` in the background, unless its user is not allowed, another
        tap on its tag is under way, or the daemon is stopping."""
        if tap.user not in self.allowed:
            log.warning(
                "slack_action_refused reason=not_allowed user=%s action=%s ref=%s",
                tap.user,
                tap.verb,
                tap.shown,
            )
            self._refused(tap.verb, "not_allowed")
            self.spawn(responder.tell(tap, answers.not_allowed_text(tap.shown)), "slack tell")
            return Response(status_code=200)
        if not responder.claim(tap):
            self._refuse(tap, "busy", logging.INFO)
            self.spawn(responder.tell(tap, answers.busy_text(tap.shown)), "slack tell")
            return Response(status_code=200)
        log.info("slack_action action=%s ref=%s by=%s", tap.verb, tap.shown, tap.actor)
        if self.spawn(responder.perform(tap), f"slack {tap.verb} {tap.shown}"):
            return Response(status_code=200)
        # shutting down: refuse rather than start something shutdown might cut short
        responder.release(tap)
        self._refuse(tap, "stopping")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                responder.tell(tap, answers.restarting_text(tap.shown)), TELL_TIMEOUT
            )
        return common.error(503, "shutting down: tap again in a minute")
