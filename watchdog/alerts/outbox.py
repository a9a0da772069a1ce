"""Durable alert delivery: the worker that empties the outbox.

The store writes one outbox row per (event, channel) in the event's own transaction. This worker
leases due rows, sends each, and records the outcome in the database right after the send:

* delivered -> ``mark_delivered`` (committed before the next row is sent);
* temporary failure (429, 5xx, connection error) -> tried again later, after ``Retry-After`` when
  the channel gave one, else after an exponential backoff (``RetryPolicy``: backoff as data);
* permanent refusal (``invalid_auth``, ``channel_not_found``, a deleted webhook) or too many
  attempts -> ``mark_failed`` with the reason, counted in ``alerts_total{result="failed"}``.

A row is leased (``lease`` seconds) before it is sent, so a second worker never sends it too; a
worker that dies mid-send leaves the lease to run out and the row is sent again then. That is the
one at-least-once window: a crash between the channel's 200 and the commit of ``delivered``
(docs/ALERTS.md). The clock and sleep are injected; tests never sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from watchdog import config, errors, models
from watchdog.alerts import slack

log = logging.getLogger("watchdog.alerts")

# Recording a delivery the database refused for now: first wait, longest wait, and how much of
# the lease to leave unused (the next attempt itself may wait busy_timeout on SQLite).
DELIVERED_RETRY_FIRST = 0.5
DELIVERED_RETRY_CAP = 5.0
DELIVERED_RETRY_MARGIN = 6.0

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When to try a temporarily failed alert again: ``base * factor**(attempt-1)`` seconds,
    at most ``cap``; a channel's ``Retry-After`` wins (up to ``max_retry_after``). After
    ``max_attempts`` attempts the alert is marked failed."""

    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0
    max_attempts: int = 200
    max_retry_after: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.cap, self.base * self.factor ** max(attempt - 1, 0))


class OutboxStore(Protocol):
    """What the worker needs of the store (watchdog.store.repo.Store)."""

    def claim_alerts(
        self, now: dt.datetime, *, lease: float, limit: int = 50
    ) -> list[models.OutboxItem]: ...

    def mark_delivered(self, item_id: int, now: dt.datetime, remote_id: str | None) -> None: ...

    def mark_failed(self, item_id: int, now: dt.datetime, reason: str) -> None: ...

    def retry_alert(self, item_id: int, next_try: dt.datetime, reason: str) -> None: ...

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
        clock: Clock = _utcnow,
        sleep: Sleep = asyncio.sleep,
        policy: RetryPolicy = RetryPolicy(),
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
        message = slack.render_item(item, self.settings)
        try:
            remote_id = await asyncio.to_thread(sender.send, message, item.thread_id)
        except errors.AlertError as exc:
            await self._failed(item, what, exc)
            return
        # Recorded at once: the shorter the gap between the channel's 200 and this commit, the
        # smaller the window in which a crash would send the alert twice.
        await self._mark_delivered(item, remote_id, lease_ends)
        self._count(item.channel, "delivered")
        log.info(
            "alert_delivered id=%d %s channel=%s attempts=%d",
            item.id,
            what,
            item.channel,
            item.attempts,
        )

    async def _mark_delivered(
        self, item: models.OutboxItem, remote_id: str | None, lease_ends: dt.datetime
    ) -> None:
        """Record that the channel took ``item``. While the database is temporarily unavailable
        (another process holding SQLite's write lock past busy_timeout, a PostgreSQL restart),
        try again, backing off, for as long as the lease holds: the alert is out, and a row
        left undelivered would be sent a second time once its lease ran out. Raises the last
        ``errors.StoreError`` when the lease is (nearly) over or the error is permanent."""
        delay = DELIVERED_RETRY_FIRST
        while True:
            try:
                await asyncio.to_thread(self.store.mark_delivered, item.id, self.clock(), remote_id)
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

    async def _failed(self, item: models.OutboxItem, what: str, exc: errors.AlertError) -> None:
        now = self.clock()
        if exc.temporary and item.attempts < self.policy.max_attempts:
            delay = self.policy.delay(item.attempts, exc.retry_after)
            await asyncio.to_thread(
                self.store.retry_alert, item.id, now + dt.timedelta(seconds=delay), str(exc)
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


def _describe(item: models.OutboxItem) -> str:
    if item.event is not None:
        return f"kind={item.event.kind.value} ref={item.event.repository}:{item.event.tag}"
    return f"kind={(item.notice or {}).get('kind', 'notice')}"


async def send_test(settings: config.Settings) -> dict[str, str | None]:
    """Send the test message through every configured channel; channel -> None when it was
    delivered, else the reason it was not. Empty when no channel is configured."""
    results: dict[str, str | None] = {}
    message = slack.render_test()
    for name, s in senders(settings).items():
        try:
            await asyncio.to_thread(s.send, message, None)
            results[name] = None
        except errors.AlertError as exc:
            results[name] = str(exc)
    return results
