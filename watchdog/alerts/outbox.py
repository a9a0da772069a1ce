"""Durable alert delivery: the worker that empties the outbox.

The store writes one outbox row per (event, channel) in the event's own transaction. This worker
leases due rows, sends each, and records the outcome in the database right after the send:

* delivered -> ``mark_delivered`` (committed before the next row is sent);
* temporary failure (429, 5xx, connection error) -> tried again later, after ``Retry-After`` when
  the channel gave one, else after an exponential backoff (``retry.Policy``: backoff as data);
* permanent refusal (``invalid_auth``, ``channel_not_found``, a deleted webhook) or too many
  attempts -> ``mark_failed`` with the reason, counted in ``alerts_total{result="failed"}``.

A row is leased (``lease`` seconds) before it is sent, so a second worker never sends it too; a
worker that dies mid-send leaves the lease to run out and the row is tried again then.

Exactly once in bot mode: before each send the row records that a send starts (``sent_at``, and a
random ``send_key`` the message carries as Slack message metadata), committed. A row claimed again
with ``sent_at`` set may already be in Slack (a crash between Slack's 200 and the ``delivered``
commit, a timeout, a 5xx): it is first looked for in the channel's history by its key, and when
found it is recorded as delivered (with its ``ts``) instead of being sent again. When the lookup
cannot tell (``missing_scope``, rate limit, outage) the row is sent again, at-least-once, and
counted as ``alerts_total{result="unverified"}``. Incoming Webhooks have no history to look in: a
crash between their 200 and the commit sends the alert twice (docs/ALERTS.md). The clock and
sleep are injected; tests never sleep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from watchdog import config, errors, models, retry
from watchdog.alerts import incident as incident_view
from watchdog.alerts import render, slack

log = logging.getLogger("watchdog.alerts")

# Recording a delivery the database refused for now: first wait, longest wait, and how much of
# the lease to leave unused (the next attempt itself may wait busy_timeout on SQLite).
DELIVERED_RETRY_FIRST = 0.5
DELIVERED_RETRY_CAP = 5.0
DELIVERED_RETRY_MARGIN = 6.0

# A send is started only while this much of its row's lease is left (at most half the lease): the
# send itself takes up to the channel's timeout, and once the lease is over another worker (a
# replica) may claim the row and send it too.
SEND_MARGIN = 15.0

# A lookup reads the history from this long before the recorded start of the send: Slack's clock
# (its ``ts``) and ours may disagree by a little.
LOOKUP_MARGIN = dt.timedelta(minutes=5)

Clock = models.Clock
Sleep = Callable[[float], Awaitable[None]]


# When to try a temporarily failed alert again: backoff up to 5 min, a channel's Retry-After up
# to an hour (a longer one is waited for an hour, not given up on: the row is durable); after
# 200 attempts the alert is marked failed.
DEFAULT_RETRY = retry.Policy(attempts=200, base=2.0, factor=2.0, cap=300.0, max_retry_after=3600.0)


class OutboxStore(Protocol):
    """What the worker needs of the store (watchdog.store.outbox.Outbox, a ``Store``'s ``outbox``)."""

    def claim_alerts(
        self, now: dt.datetime, *, lease: float, limit: int = 50
    ) -> list[models.OutboxItem]: ...

    def begin_send(
        self, item_id: int, at: dt.datetime, key: str, covers: int | None = None
    ) -> None: ...

    def mark_delivered(
        self,
        item_id: int,
        now: dt.datetime,
        remote_id: str | None,
        remote_channel: str | None = None,
        covers: int | None = None,
    ) -> None: ...

    def defer_alert(self, item_id: int, next_try: dt.datetime) -> None: ...

    def last_remote_channel(self, channel: str) -> str | None: ...

    def mark_failed(self, item_id: int, now: dt.datetime, reason: str) -> None: ...

    def retry_alert(
        self, item_id: int, next_try: dt.datetime, reason: str, *, not_sent: bool = False
    ) -> None: ...

    def pending_alerts(self) -> int: ...

    def next_alert_due(self) -> dt.datetime | None: ...


class Observer(Protocol):
    """Where deliveries are counted (watchdog.metrics.Metrics)."""

    def on_alert(self, channel: str, result: str) -> None: ...

    def on_outbox_pending(self, pending: int) -> None: ...


def senders(settings: config.Settings) -> dict[str, slack.Sender]:
    """Every configured alert channel's sender, by channel name."""
    out: dict[str, slack.Sender] = {}
    s = slack.sender(settings.slack)
    if s is not None:
        out[s.name] = s
    return out


def channel_names(settings: config.Settings) -> tuple[str, ...]:
    """The names of the configured alert channels: what the store queues outbox rows for."""
    return (slack.CHANNEL,) if slack.configured(settings.slack) else ()


class Worker:
    """Delivers the outbox. ``run()`` in the daemon; ``drain()`` for one-shot commands."""

    def __init__(
        self,
        store: OutboxStore,
        senders_: Mapping[str, slack.Sender],
        settings: config.Settings,
        *,
        observer: Observer | None = None,
        clock: Clock = models.utcnow,
        sleep: Sleep = asyncio.sleep,
        policy: retry.Policy = DEFAULT_RETRY,
        lease: float | None = None,
        poll: float = 1.0,
    ) -> None:
        self.store = store
        self.senders = dict(senders_)
        self.settings = settings
        self.observer = observer
        self.clock = clock
        self.sleep = sleep
        self.policy = policy
        # None: the configured ``slack.lease`` (60 s unless set)
        self.lease = settings.slack.lease if lease is None else lease
        self.poll = poll
        self._wake = asyncio.Event()
        self._warned: set[str] = set()  # lookup failures already warned about

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll (new alerts were queued)."""
        self._wake.set()

    async def run_once(self) -> int:
        """Send every alert due now, one at a time, oldest first; return how many were tried.

        Raises ``errors.StoreError`` when the database cannot be used (nothing is sent then).
        """
        tried = 0
        while True:
            claimed_at = self.clock()
            items = await asyncio.to_thread(self.store.claim_alerts, claimed_at, lease=self.lease)
            if not items:
                break
            lease_ends = claimed_at + dt.timedelta(seconds=self.lease)
            for item in items:
                await self._deliver(item, lease_ends)
            tried += len(items)
        await self._report_pending()
        return tried

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, looking at the outbox every ``poll`` seconds or when
        woken. A send under way finishes (and is recorded) before this returns."""
        log.info("alerts_worker_started channels=%s", ",".join(sorted(self.senders)) or "-")
        while not stop.is_set():
            try:
                await self.run_once()
            except errors.StoreError as exc:
                log.warning("alerts_outbox_unavailable error=%r", str(exc))
            except Exception:
                # A bug, not an expected failure: the worker must outlive it. The row it was
                # sending stays leased and is tried again when the lease runs out.
                log.exception("alerts_worker_crashed")
            self._wake.clear()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            try:
                await asyncio.wait(waiters, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        try:
            # One last round on the way out: alerts queued by the checks that just finished.
            await self.run_once()
        except errors.StoreError as exc:
            log.warning("alerts_outbox_unavailable error=%r", str(exc))
        log.info("alerts_worker_stopped")

    async def drain(self, within: float) -> int:
        """Deliver what is queued, retrying temporary failures until nothing is pending or
        ``within`` seconds (by the injected clock) have passed; return how many stay pending."""
        deadline = self.clock() + dt.timedelta(seconds=within)
        while True:
            await self.run_once()
            pending = await asyncio.to_thread(self.store.pending_alerts)
            if pending == 0:
                return 0
            due = await asyncio.to_thread(self.store.next_alert_due)
            now = self.clock()
            if due is None or due >= deadline or now >= deadline:
                return pending
            await self.sleep(max((due - now).total_seconds(), 0.0))

    async def _deliver(self, item: models.OutboxItem, lease_ends: dt.datetime) -> None:
        sender = self.senders.get(item.channel)
        what = _describe(item)
        if sender is None:
            reason = f"channel {item.channel!r} is no longer configured"
            await asyncio.to_thread(self.store.mark_failed, item.id, self.clock(), reason)
            self._count(item.channel, "failed")
            log.warning(
                "alert_failed id=%d %s channel=%s reason=%r", item.id, what, item.channel, reason
            )
            return
        bot = sender if isinstance(sender, slack.BotSender) else None
        planned = await self._plan(item, bot)
        if planned is None:
            return
        message, thread_id, covers = planned
        in_doubt = item.sent_at  # an earlier send may be in Slack already
        unverified = False
        if bot is not None and in_doubt is not None:
            found = await self._look_up(item, bot, what)
            if isinstance(found, slack.Posted):
                await self._mark_delivered(item, found, lease_ends, None)
                self._count(item.channel, "found")
                log.info(
                    "alert_found id=%d %s channel=%s attempts=%d ts=%s: an earlier send had "
                    "reached Slack; recorded as delivered, not sent again",
                    item.id,
                    what,
                    item.channel,
                    item.attempts,
                    found.ts,
                )
                return
            if found is None:
                in_doubt = None  # the history since that send has no such message
            else:
                unverified = True
        left = (lease_ends - self.clock()).total_seconds()
        if left < min(SEND_MARGIN, self.lease / 2):
            # slow sends (or a slow lookup) used up the lease of this batch: another worker may
            # take the row any moment now. It is claimed afresh (and looked up if in doubt).
            log.info(
                "alert_deferred id=%d %s channel=%s reason=lease_nearly_over left=%.1fs",
                item.id,
                what,
                item.channel,
                left,
            )
            return
        try:
            if bot is not None:
                key = item.send_key or uuid.uuid4().hex
                # Committed before the send: should this process die before ``delivered`` is,
                # the next worker knows to look for the message first.
                await asyncio.to_thread(
                    self.store.begin_send, item.id, in_doubt or self.clock(), key, covers
                )
                event_id = item.event.id if item.event is not None else None
                metadata = slack.alert_metadata(item.id, event_id, key)
                posted = await asyncio.to_thread(bot.post, message, thread_id, metadata)
            else:
                if item.incident is not None:
                    # started: what joins the incident from now on needs a message of its own
                    # (a webhook row is never looked up: the key goes unused)
                    await asyncio.to_thread(
                        self.store.begin_send, item.id, self.clock(), uuid.uuid4().hex, covers
                    )
                ts = await asyncio.to_thread(sender.send, message, thread_id)
                posted = slack.Posted(ts, None)
        except errors.AlertError as exc:
            # A send Slack refused outright did not post; anything else may have.
            not_sent = bot is not None and in_doubt is None and _refused_outright(exc)
            await self._failed(item, what, exc, not_sent=not_sent)
            return
        # Recorded at once: the shorter the gap between the channel's 200 and this commit, the
        # smaller the window in which a crash leaves the outcome unknown.
        await self._mark_delivered(item, posted, lease_ends, covers)
        self._count(item.channel, "unverified" if unverified else "delivered")
        log.info(
            "alert_delivered id=%d %s channel=%s attempts=%d%s",
            item.id,
            what,
            item.channel,
            item.attempts,
            " unverified=true" if unverified else "",
        )

    async def _plan(
        self, item: models.OutboxItem, bot: slack.BotSender | None
    ) -> tuple[render.Message, str | None, int | None] | None:
        """What to send for ``item``: the message, the thread it goes to and (for an incident)
        the highest event id it shows; None when nothing is to be sent now (an incident's
        update with nothing new is recorded as delivered; a webhook's closing message of an
        incident still open is deferred to its close)."""
        if item.incident is None:
            return render.render_item(item, self.settings), item.thread_id, None
        incident = item.incident
        contexts = incident_view.contexts(incident, self.settings, item.first_seen)
        shows = incident_view.covers(incident)
        news = [e for e in incident.events if (e.id or 0) > item.covered]
        what = _describe(item)
        if item.covered == 0 or (bot is not None and item.thread_id is None):
            # nothing of it delivered on this channel yet: the incident as it stands, top-level
            return incident_view.render_incident(incident, contexts), None, shows
        if bot is None and incident.is_open(self.clock()):
            # a webhook cannot thread or edit: one closing message once the window is over
            await asyncio.to_thread(self.store.defer_alert, item.id, incident.closes_at)
            log.info(
                "alert_deferred id=%d %s channel=%s reason=incident_open",
                item.id,
                what,
                item.channel,
            )
            return None
        replies = [e for e in news if e.kind in incident_view.REPLIED]
        if bot is not None and item.thread_id is not None and _redraws(incident, news):
            await self._redraw(item, bot, incident, contexts)
        if not replies:
            # nothing to say (nothing new, or only an accept: the redrawn message shows it)
            await asyncio.to_thread(
                functools.partial(
                    self.store.mark_delivered, item.id, self.clock(), None, covers=shows
                )
            )
            log.info(
                "alert_skipped id=%d %s channel=%s reason=nothing_to_say",
                item.id,
                what,
                item.channel,
            )
            return None
        if bot is None and not incident_view.is_single(incident):
            return incident_view.render_incident(incident, contexts, closing=True), None, shows
        return incident_view.render_news(incident, replies, contexts), item.thread_id, shows

    async def _redraw(
        self,
        item: models.OutboxItem,
        bot: slack.BotSender,
        incident: models.Incident,
        contexts: dict[str, render.Context],
    ) -> None:
        """Redraw the incident's top-level message as it stands (``chat.update``: idempotent,
        so a retry simply draws it again). A failure leaves the message as it was."""
        if item.parent_channel is None or item.thread_id is None:
            return
        parent = incident_view.render_incident(incident, contexts)
        try:
            await asyncio.to_thread(bot.update, item.parent_channel, item.thread_id, parent)
        except errors.AlertError as exc:
            log.warning(
                "alert_update_failed id=%d %s channel=%s error=%r: the incident's message shows "
                "what it showed; the news goes to its thread",
                item.id,
                _describe(item),
                item.channel,
                str(exc),
            )

    async def _look_up(
        self, item: models.OutboxItem, bot: slack.BotSender, what: str
    ) -> slack.Posted | errors.AlertError | None:
        """Look for ``item``'s message from an earlier send in its Slack channel: the message,
        None when it is not there, or the error that kept the lookup from telling."""
        assert item.sent_at is not None
        channel_id = bot.channel_id or await asyncio.to_thread(
            self.store.last_remote_channel, item.channel
        )
        try:
            if item.send_key is None or channel_id is None:
                raise errors.AlertError(
                    "the Slack channel id is not known yet (no alert delivered; slack.channel "
                    "set to the channel's id, e.g. C0123ABCD, avoids this)",
                    channel=item.channel,
                )
            oldest = item.sent_at - LOOKUP_MARGIN
            return await asyncio.to_thread(
                bot.find, channel_id, item.send_key, oldest, _reply_to(item)
            )
        except errors.AlertError as exc:
            self._lookup_failed(item, what, exc)
            return exc

    def _lookup_failed(self, item: models.OutboxItem, what: str, exc: errors.AlertError) -> None:
        scope = exc.needed_scope
        if scope is not None:
            reason = "missing_scope"
            advice = (
                f"the bot token lacks the {scope} scope: add it to the Slack app (OAuth & "
                "Permissions: channels:history for a public channel, groups:history for a "
                "private one) and reinstall the app"
            )
        elif exc.status == 429:
            reason, advice = "rate_limited", "Slack rate-limited the lookup"
        elif exc.temporary:
            reason, advice = "unavailable", "Slack could not be asked"
        else:
            reason, advice = "refused", "Slack refused the lookup"
        # The missing scope is a setup problem: said loudly once, quietly after that.
        level = (
            logging.INFO
            if reason == "missing_scope" and reason in self._warned
            else logging.WARNING
        )
        self._warned.add(reason)
        log.log(
            level,
            "alert_lookup_failed id=%d %s channel=%s reason=%s%s error=%r: cannot tell whether "
            "an earlier send reached Slack, so the alert is sent again (at-least-once; "
            'counted in alerts_total{result="unverified"}); %s',
            item.id,
            what,
            item.channel,
            reason,
            f" needed={scope}" if scope else "",
            str(exc),
            advice,
        )

    async def _mark_delivered(
        self,
        item: models.OutboxItem,
        posted: slack.Posted,
        lease_ends: dt.datetime,
        covers: int | None,
    ) -> None:
        """Record that the channel took ``item``. While the database is temporarily unavailable
        (another process holding SQLite's write lock past busy_timeout, a PostgreSQL restart),
        try again, backing off, for as long as the lease holds: the alert is out, and a row
        left undelivered would be sent a second time once its lease ran out. Raises the last
        ``errors.StoreError`` when the lease is (nearly) over or the error is permanent."""
        delay = DELIVERED_RETRY_FIRST
        while True:
            try:
                await asyncio.to_thread(
                    functools.partial(
                        self.store.mark_delivered,
                        item.id,
                        self.clock(),
                        posted.ts,
                        posted.channel,
                        covers=covers,
                    )
                )
                return
            except errors.StoreError as exc:
                left = (lease_ends - self.clock()).total_seconds()
                if not exc.temporary or left < delay + DELIVERED_RETRY_MARGIN:
                    raise
                log.warning(
                    "alert_delivered_not_recorded id=%d retry_in=%.1fs error=%r",
                    item.id,
                    delay,
                    str(exc),
                )
            await self.sleep(delay)
            delay = min(delay * 2, DELIVERED_RETRY_CAP)

    async def _failed(
        self, item: models.OutboxItem, what: str, exc: errors.AlertError, *, not_sent: bool
    ) -> None:
        now = self.clock()
        if exc.temporary and not self.policy.exhausted(item.attempts):
            delay = self.policy.delay(item.attempts, exc.retry_after)
            await asyncio.to_thread(
                functools.partial(
                    self.store.retry_alert,
                    item.id,
                    now + dt.timedelta(seconds=delay),
                    str(exc),
                    not_sent=not_sent,
                )
            )
            self._count(item.channel, "retry")
            log.warning(
                "alert_retry id=%d %s channel=%s attempt=%d in=%.1fs error=%r",
                item.id,
                what,
                item.channel,
                item.attempts,
                delay,
                str(exc),
            )
            return
        await asyncio.to_thread(self.store.mark_failed, item.id, now, str(exc))
        self._count(item.channel, "failed")
        log.error(
            "alert_failed id=%d %s channel=%s attempts=%d error=%r",
            item.id,
            what,
            item.channel,
            item.attempts,
            str(exc),
        )

    def _count(self, channel: str, result: str) -> None:
        if self.observer is not None:
            self.observer.on_alert(channel, result)

    async def _report_pending(self) -> None:
        if self.observer is not None:
            self.observer.on_outbox_pending(await asyncio.to_thread(self.store.pending_alerts))


def _refused_outright(exc: errors.AlertError) -> bool:
    """True when the channel answered that it did not take the message (429, or another 4xx
    but a timeout): unlike a timeout, a 5xx or a lost connection, such a send posted nothing."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status != 408


def _redraws(incident: models.Incident, news: list[models.Event]) -> bool:
    """Whether ``news`` changes what the incident's top-level message shows: a message of
    several tags shows where each stands; one of a single tag changes only with a new change
    (its follow-ups are replies, as a tag's alert's were)."""
    return not incident_view.is_single(incident) or any(
        e.kind in models.INCIDENT_CHANGES for e in news
    )


def _reply_to(item: models.OutboxItem) -> str | None:
    """The thread ``item``'s message went to: an incident's news goes to its first message's
    thread, the incident itself nowhere (top-level) until one was delivered."""
    if item.incident is not None and item.covered == 0:
        return None
    return item.thread_id


def _describe(item: models.OutboxItem) -> str:
    if item.incident is not None:
        return f"kind=incident part={item.part} incident={item.incident.id}"
    if item.event is not None:
        return f"kind={item.event.kind.value} ref={item.event.repository}:{item.event.tag}"
    return f"kind={(item.notice or {}).get('kind', 'notice')}"


async def send_test(settings: config.Settings) -> dict[str, str | None]:
    """Send the test message through every configured channel; channel -> None when it was
    delivered, else the reason it was not. Empty when no channel is configured."""
    results: dict[str, str | None] = {}
    message = render.render_test()
    for name, s in senders(settings).items():
        try:
            await asyncio.to_thread(s.send, message, None)
            results[name] = None
        except errors.AlertError as exc:
            results[name] = str(exc)
    return results
