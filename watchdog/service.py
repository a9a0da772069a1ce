"""The one orchestration point: check a watched repository, end to end.

``check_watch`` loads what is recorded, lists the tags, has ``observe`` ask the registry about
each, lets ``detect`` classify, persists the records, events and archived manifests of the whole
check in one transaction, and counts the outcome. Per-tag failures become a log line, a state and
a metric; the loop goes on. Outage notices live in ``outages``, ``on_move: restore`` and its loop
protection in ``autorestore``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from watchdog import (
    autorestore,
    config,
    detect,
    errors,
    metrics,
    models,
    notifications,
    observe,
    outages,
)
from watchdog.registry import client as registry_client
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.service")

Clock = models.Clock

# Watches checked at once (`scan`, and the daemon's slots), shared fairly between registries
# (FairSlots). Each check holds its repository's records and registry answers until its one
# transaction commits (new manifests stream to the archive before it), and a database connection
# while it writes: this bounds memory by a few repositories' working sets and SQLite's writers by
# a few, whatever the number of watches.
MAX_CONCURRENT_CHECKS = 8
# `scan`: watches started but not yet printed, per check slot (see check_all)
WINDOW_PER_CHECK = 4
# Tags outside the OCI grammar warned about, per repository, for the life of the process: each
# such tag is reported once, not every cycle; past this many a repository's further ones are
# reported only as a count (a hostile tags/list must not grow memory or the log without bound).
MAX_INVALID_TAGS_REMEMBERED = 100

utcnow = models.utcnow


class Clients:
    """One registry client per registry host, created on first use, closed together."""

    def __init__(
        self,
        settings: config.Settings,
        observer: metrics.Metrics | None = None,
        **client_options: Any,
    ) -> None:
        """``client_options`` go to every RegistryClient (tests pass ``sleep`` and ``retry``)."""
        self._settings = settings
        self._observer = observer
        self._options = client_options
        self._clients: dict[str, registry_client.RegistryClient] = {}

    def get(self, host: str) -> registry_client.RegistryClient:
        client = self._clients.get(host)
        if client is None:
            client = registry_client.RegistryClient(
                self._settings.registry(host), observer=self._observer, **self._options
            )
            self._clients[host] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check of one watched repository."""

    repository: str
    registry: str
    tags_checked: int = 0
    events: list[models.Event] = dataclasses.field(default_factory=list)
    tag_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None  # the whole check failed (listing, database)
    drifted: list[models.TagRecord] = dataclasses.field(default_factory=list)
    # The drifted tags known from the record only: this check could not ask the registry about
    # them (an outage, a tag's error), so their drift is the last one seen, not re-checked.
    not_rechecked: set[str] = dataclasses.field(default_factory=set)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.tag_errors


class FairSlots:
    """At most ``limit`` checks at once, shared between registries so that a slow one costs its
    own watches only.

    A registry may always take a free slot while it holds less than its fair share
    (``ceil(limit / registries holding or waiting for slots)``). Beyond its share it may borrow
    a free slot only when no other registry is waiting, and, when the watches name more than one
    registry, never the last free one: a registry whose turn comes while another's checks hang
    (a registry dripping its answer a byte a second, until its check deadline) finds a slot at
    once instead of waiting behind them. Nothing is pre-empted: a check holds its slot until it
    ends, which its deadline (``check_timeout``) bounds.
    """

    def __init__(self, limit: int, registries: Collection[str] = ()) -> None:
        """``registries``: the hosts the watches name (more than one keeps a slot in reserve)."""
        self.limit = max(1, limit)
        self._reserve = 1 if len(set(registries)) > 1 and self.limit > 1 else 0
        self.held: collections.Counter[str] = collections.Counter()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._cond = asyncio.Condition()

    def share(self, registry: str) -> int:
        """The slots ``registry`` may hold now: its fair part while other registries hold or wait
        for slots; alone, all but the reserve."""
        contenders = {k for k, n in (self.held + self._waiting).items() if n > 0} | {registry}
        if len(contenders) == 1:
            return self.limit - self._reserve
        return max(1, math.ceil(self.limit / len(contenders)))

    def _may_take(self, registry: str) -> bool:
        total = sum(self.held.values())
        if total >= self.limit:
            return False
        if self.held[registry] < self.share(registry):
            return True
        others_wait = any(n > 0 for k, n in self._waiting.items() if k != registry)
        return not others_wait and total < self.limit - self._reserve

    @contextlib.asynccontextmanager
    async def hold(self, registry: str) -> AsyncIterator[None]:
        """One slot for a check of a watch of ``registry``, for the body's duration."""
        async with self._cond:
            self._waiting[registry] += 1
            try:
                await self._cond.wait_for(lambda: self._may_take(registry))
            finally:
                self._waiting[registry] -= 1
                if self._waiting[registry] <= 0:
                    del self._waiting[registry]
                self._cond.notify_all()  # one waiter fewer may let another registry borrow
            self.held[registry] += 1
        try:
            yield
        finally:
            # the lock is never held across an await, so this takes it without waiting
            async with self._cond:
                self.held[registry] -= 1
                if self.held[registry] <= 0:
                    del self.held[registry]
                self._cond.notify_all()


async def check_all(
    checker: Checker,
    watches: Sequence[config.WatchSettings],
    on_result: Callable[[CheckResult], None],
    *,
    limit: int = MAX_CONCURRENT_CHECKS,
    window: int | None = None,
) -> None:
    """``checker.check_watch`` every watch, at most ``limit`` at once, handing each result to
    ``on_result`` in the order of ``watches`` (reproducible output) as soon as it and those
    before it are done; the ``limit`` slots are shared fairly between registries (FairSlots).

    At most ``window`` (default ``4 * limit``) watches are started and not yet handed over: a
    watch slower than the next ``window - 1`` together holds the rest back rather than letting
    finished results pile up behind it. So a scan of any number of watches holds at most
    ``window`` results and ``limit`` working sets. A check that raises (a bug: expected failures
    are in the result) cancels the others and the exception propagates.
    """
    window = max(limit, window if window is not None else WINDOW_PER_CHECK * limit)
    slots = FairSlots(limit, {w.repository.host for w in watches})
    pending: collections.deque[asyncio.Task[CheckResult]] = collections.deque()

    async def one(watch: config.WatchSettings) -> CheckResult:
        async with slots.hold(watch.repository.host):
            return await checker.check_watch(watch)

    try:
        for watch in watches:
            if len(pending) >= window:
                on_result(await pending.popleft())
            pending.append(asyncio.create_task(one(watch)))
        while pending:
            on_result(await pending.popleft())
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Checker:
    """Checks watches against registries and records the results. Safe to share across tasks."""

    def __init__(
        self,
        settings: config.Settings,
        store: store_repo.Store,
        clients: Clients,
        metrics_: metrics.Metrics,
        *,
        clock: Clock = utcnow,
        policy: detect.Policy = detect.DEFAULT_POLICY,
        pushers: notifications.PushLedger | None = None,
    ) -> None:
        self.settings = settings
        self.pushers = pushers  # who pushed, from registry notifications (the daemon's)
        self.store = store
        self.clients = clients
        self.metrics = metrics_
        self.clock = clock
        self.policy = policy
        self.outages = outages.Outages(
            store.outbox, unreachable_after=settings.slack.unreachable_after, clock=clock
        )
        self.restorer = autorestore.AutoRestorer(
            settings.restore, store, clients.get, metrics_, clock=clock
        )
        # repository -> invalid tags already warned about (see MAX_INVALID_TAGS_REMEMBERED)
        self._invalid_tags: dict[str, set[str]] = {}
        for watch in settings.watches:
            metrics_.watch(watch.name, watch.repository.host)

    async def check_watch(self, watch: config.WatchSettings) -> CheckResult:
        """Check every release tag of ``watch`` once and persist the outcome in one transaction.

        Never raises for registry or database failures: they are reported in the result, logged
        and counted, and leave every recorded state as it was.
        """
        ref = watch.repository
        result = CheckResult(repository=ref.name, registry=ref.host)
        started = time.monotonic()
        unreachable: str | None = None
        try:
            await self._check(watch, result)
        except Exception as exc:
            # Anything but a WatchdogError is a bug: a failed check all the same (logged with its
            # traceback, counted, recorded), so that one odd answer never silences the cycle.
            message = str(exc)
            if not isinstance(exc, errors.WatchdogError):
                log.error("check_crashed repository=%s", ref.name, exc_info=exc)
                message = f"internal error: {type(exc).__name__}"
            result.error = message
            if isinstance(exc, errors.RegistryError) and exc.temporary:
                unreachable = message
            log.warning("check_failed repository=%s error=%r", ref.name, message)
            try:
                await asyncio.to_thread(
                    self.store.record_watch_error, ref.name, self.clock(), message
                )
            except errors.StoreError as store_exc:
                log.warning("record_error_failed repository=%s error=%r", ref.name, str(store_exc))
        result.seconds = time.monotonic() - started
        self.metrics.poll_duration.labels(repository=ref.name).observe(result.seconds)
        self.metrics.checks.labels(registry=ref.host, result="ok" if result.ok else "error").inc()
        if result.ok:
            self.metrics.last_successful_poll.labels(repository=ref.name).set(time.time())
        await self.outages.note(ref.host, unreachable, answered=result.error is None)
        return result

    async def _check(self, watch: config.WatchSettings, result: CheckResult) -> None:
        """load -> list -> observe -> classify -> persist (-> restore) -> count."""
        ref = watch.repository
        registry = self.clients.get(ref.host)
        records = await asyncio.to_thread(self.store.load_tags, ref.name)
        _recorded_drift(result, records)  # what the result says if the registry cannot be asked
        # restore policies: moves (deletions) whose promised restore has no outcome yet
        window = dt.timedelta(seconds=self.settings.restore.window)
        unfinished = await autorestore.unfinished(
            self.store, watch, records, since=self.clock() - window
        )
        limit = self.settings.registry(ref.host).max_concurrency
        observer = observe.Observer(
            registry, self.store, ref, clock=self.clock, children_limit=limit
        )
        # The deadline bounds what the registry can cost (a registry dripping its answers would
        # otherwise hold this check, and its slot, for every request's timeout and retries);
        # writing the outcome below is never cut short.
        deadline = self.settings.check_deadline(watch)
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                todo = await self._todo(registry, watch, records)
                # new manifests go to the archive as they are fetched, before the records below
                outcomes = await observer.tags(todo, records, limit=limit)
        except TimeoutError:
            if not timeout.expired():
                raise
            raise errors.RegistryUnavailable(
                f"{ref.host}: the check of {ref.name} timed out: the registry did not answer "
                f"all its requests within the {deadline:g}s check deadline (check_timeout)",
                registry=ref.host,
            ) from None
        now = self.clock()
        changes: list[models.Change] = []
        resume: list[models.Event] = []
        for (tag, _), outcome in zip(todo, outcomes, strict=True):
            obs = outcome.observation
            if obs.kind is models.ObservationKind.ERROR:
                result.tag_errors[tag] = obs.error or "error"
                log.warning("tag_check_failed ref=%s:%s error=%r", ref.name, tag, obs.error)
                continue
            change, resumed = self._classify(
                watch, tag, outcome, records.get(tag), unfinished.get(tag), now
            )
            if resumed is not None:
                resume.append(resumed)
            if change.record is not None or change.event is not None:
                changes.append(change)
        result.tags_checked = len(outcomes)
        changes = await self._attributed_from_store(ref, changes, now)
        resume.extend(autorestore.unobserved(unfinished, {t for t, _ in todo}))
        changes = await autorestore.annotate_deletions(registry, watch, changes)
        events = await asyncio.to_thread(
            self.store.apply_check,
            ref.name,
            now,
            changes,
            skip_touch=set(result.tag_errors),
            error=_summary(result.tag_errors),
        )
        self.metrics.count_incidents(events)  # before the restores: theirs join, never open
        if watch.restores:
            restored = await self.restorer.run(watch, events, resume)
            changes.extend(c for c, _ in restored)
            events = [*events, *(e for _, e in restored)]
        result.events = events
        self._account(ref.name, records, changes, events, result)

    async def _todo(
        self,
        registry: registry_client.RegistryClient,
        watch: config.WatchSettings,
        records: Mapping[str, models.TagRecord],
    ) -> list[tuple[str, bool]]:
        """The tags to ask about, each with whether tags/list has it: the listed tags the watch
        wants, then the known ones missing from the listing (absence needs both answers)."""
        ref = watch.repository
        try:
            listed = await registry.list_tags(ref.repository)
        except errors.NotFound:
            # NAME_UNKNOWN: the repository is gone; each known tag still needs its own definitive 404
            listed = []
        listed = self._valid_tags(ref.name, listed)
        listed_set = set(listed)
        wanted = [t for t in listed if watch.tags.matches(t)]
        unlisted = [
            t
            for t, r in records.items()
            if t not in listed_set
            and r.state is not models.TagState.DELETED
            and watch.tags.matches(t)
        ]
        return [(t, True) for t in wanted] + [(t, False) for t in unlisted]

    def _valid_tags(self, repository: str, listed: Sequence[str]) -> list[str]:
        """``listed`` without the tags outside the OCI tag grammar (``models.is_tag``), each of
        which is warned about once per process (``tag_invalid_skipped``), never failing the rest.

        A registry cannot store such a tag, so one in tags/list is a registry's (or a proxy's)
        mistake or malice: ``1.2.3+build.5``, ``"1.2.3\\n"`` (which would reach a URL), 10 KB of
        junk. Asking about it could only fail, every cycle, so it is no tag of ours.
        """
        valid = [t for t in listed if models.is_tag(t)]
        if len(valid) == len(listed):
            return valid
        warned = self._invalid_tags.setdefault(repository, set())
        invalid = [t for t in listed if not models.is_tag(t)]
        new = [t for t in invalid if t not in warned]
        room = max(0, MAX_INVALID_TAGS_REMEMBERED - len(warned))
        for tag in new[:room]:
            warned.add(tag)
            log.warning(
                "tag_invalid_skipped repository=%s tag=%s reason=%r",
                repository,
                # ascii(): every control or non-ASCII character escaped, so the line says
                # exactly what was listed ("1.2.3\\n") and stays one line
                ascii(tag[:140]),
                "not an OCI tag (letters, digits, '_', '.', '-'; at most 128)",
            )
        if len(new) > room and "" not in warned:
            # once ("" is no tag, so it can mark this): later invalid tags go unnamed
            warned.add("")
            log.warning(
                "tag_invalid_skipped repository=%s count=%d reason=%r",
                repository,
                len(invalid),
                f"more than {MAX_INVALID_TAGS_REMEMBERED} invalid tags; no longer named",
            )
        return valid

    def _classify(
        self,
        watch: config.WatchSettings,
        tag: str,
        outcome: observe.TagOutcome,
        record: models.TagRecord | None,
        unfinished: models.Event | None,
        now: dt.datetime,
    ) -> tuple[models.Change, models.Event | None]:
        """What one tag's (successful) observation means, and the ``unfinished`` restore of it
        to finish now (None when there is none or something else happened to the tag)."""
        ref = watch.repository
        obs = outcome.observation
        change = detect.classify(record, obs, now, repository=ref.name, tag=tag, policy=self.policy)
        resume = None
        if unfinished is not None and autorestore.finishes_restore(obs, change):
            resume = unfinished
            if change.event is not None:
                # back at the recorded digest: our PUT got there before the daemon died; the
                # restore writes `restored`, which this is, not a `reverted` by someone else
                change = models.Change(ref.name, tag)
        if change.event is not None and change.event.kind is models.EventKind.MOVED:
            detail = dict(change.event.detail)
            if outcome.images:
                detail["images"] = outcome.images
            if watch.on_move == "restore":
                detail["restoring"] = True  # a promise kept across crashes (see unfinished)
            change = dataclasses.replace(
                change, event=dataclasses.replace(change.event, detail=detail)
            )
        return self._attributed(ref, change), resume

    async def gauges_from_record(self, watch: config.WatchSettings) -> None:
        """Set the repository's tag gauges from the record, for a replica that did not check it
        (another replica claimed the slot): its gauges would else stay as its last check left
        them, and a stale ``drifted_tag_info`` keeps an alert firing after another replica
        restored the tag. Raises ``errors.StoreError``."""
        records = await asyncio.to_thread(self.store.load_tags, watch.name)
        _set_gauges(self.metrics, watch.name, records.values())

    async def _attributed_from_store(
        self, ref: models.ImageRef, changes: list[models.Change], now: dt.datetime
    ) -> list[models.Change]:
        """``changes`` with the pushers this daemon's own ledger did not know taken from the
        store's (``Store.pushes``: the notification may have reached another replica). One
        query, and only for a daemon (which takes notifications) with a move or deletion of
        unknown pusher. Best effort: a store that cannot answer leaves the pusher unknown."""
        unknown = [
            c
            for c in changes
            if c.event is not None
            and c.event.kind in (models.EventKind.MOVED, models.EventKind.DELETED)
            and "pushed_by" not in c.event.detail
        ]
        if self.pushers is None or not unknown:
            return changes
        try:
            noted = await asyncio.to_thread(self.store.pushes.recent, ref.repository, now)
        except errors.StoreError as exc:
            log.warning("pushers_unknown repository=%s error=%r", ref.name, str(exc))
            return changes
        if not noted:
            return changes
        ledger = notifications.PushLedger(clock=lambda: now.timestamp())
        for event, at in noted:
            ledger.note([event], at=at.timestamp())
        asked = {id(c) for c in unknown}
        return [self._attributed(ref, c, ledger) if id(c) in asked else c for c in changes]

    def _attributed(
        self,
        ref: models.ImageRef,
        change: models.Change,
        ledger: notifications.PushLedger | None = None,
    ) -> models.Change:
        """``change`` with who pushed (``detail["pushed_by"]``) on a move or deletion, when a
        registry notification said so (in ``ledger``, by default this daemon's); without one
        the event says nothing (pusher unknown)."""
        event = change.event
        pushers = ledger or self.pushers
        if pushers is None or event is None:
            return change
        if event.kind is models.EventKind.MOVED:
            pusher = pushers.who(ref.host, ref.repository, event.tag, event.new_digest)
        elif event.kind is models.EventKind.DELETED:
            pusher = pushers.who(
                ref.host, ref.repository, event.tag, event.old_digest, deleted=True
            )
        else:
            return change
        if pusher is None:
            return change
        detail = {**event.detail, "pushed_by": pusher.as_detail()}
        return dataclasses.replace(change, event=dataclasses.replace(event, detail=detail))

    def _account(
        self,
        repository: str,
        records: dict[str, models.TagRecord],
        changes: Sequence[models.Change],
        events: Sequence[models.Event],
        result: CheckResult,
    ) -> None:
        """Set the repository's gauges and ``result.drifted`` from the records after the check,
        count and log every event written."""
        current = dict(records)
        for change in changes:
            if change.record is not None:
                current[change.tag] = change.record
        m = self.metrics
        result.drifted = _set_gauges(m, repository, current.values())
        result.not_rechecked = {r.tag for r in result.drifted if r.tag in result.tag_errors}
        for event in events:
            if event.kind is models.EventKind.MOVED:
                m.tag_moves.labels(repository=repository).inc()
                log.warning(
                    "tag_moved ref=%s:%s old=%s new=%s",
                    repository,
                    event.tag,
                    event.old_digest,
                    event.new_digest,
                )
            elif event.kind is models.EventKind.DELETED:
                m.tag_deletions.labels(repository=repository).inc()
                log.warning(
                    "tag_deleted ref=%s:%s last=%s", repository, event.tag, event.old_digest
                )
            elif event.kind is models.EventKind.FIRST_SEEN:
                log.info(
                    "tag_recorded ref=%s:%s digest=%s", repository, event.tag, event.new_digest
                )
            else:
                log.info(
                    "tag_%s ref=%s:%s digest=%s",
                    event.kind.value,
                    repository,
                    event.tag,
                    event.new_digest,
                )


def _recorded_drift(result: CheckResult, records: Mapping[str, models.TagRecord]) -> None:
    """``result.drifted``: the tags the record knows as drifted (or deleted), all not re-checked."""
    result.drifted = _drifted(records.values())
    result.not_rechecked = {r.tag for r in result.drifted}


def _summary(tag_errors: Mapping[str, str]) -> str | None:
    """The watch's error line for a check in which some tags could not be checked, or None."""
    if not tag_errors:
        return None
    return f"{len(tag_errors)} tag(s) could not be checked: " + "; ".join(
        f"{t}: {e}" for t, e in sorted(tag_errors.items())[:3]
    )


def _drifted(records: Iterable[models.TagRecord]) -> list[models.TagRecord]:
    """The records that are not ``ok`` (drifted, deleted, broken), by tag."""
    return sorted((r for r in records if r.state is not models.TagState.OK), key=lambda r: r.tag)


def _set_gauges(
    m: metrics.Metrics, repository: str, records: Iterable[models.TagRecord]
) -> list[models.TagRecord]:
    """Set the repository's tag gauges from its ``records`` (tags watched, tags drifted, one
    series per drifted tag); return the drifted records."""
    records = list(records)
    drifted = _drifted(records)
    watched = sum(r.state is not models.TagState.DELETED for r in records)
    m.tags_watched.labels(repository=repository).set(watched)
    m.tags_drifted.labels(repository=repository).set(len(drifted))
    m.set_drifted_tags(repository, [(r.tag, r.state.value) for r in drifted])
    return drifted
