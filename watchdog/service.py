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
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
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

# Watches checked at once (`scan`, and the daemon's slots). Each check holds its repository's
# records, registry answers and archived manifests until its one transaction commits, and a
# database connection while it writes: this bounds memory by a few repositories' working sets and
# SQLite's writers by a few, whatever the number of watches.
MAX_CONCURRENT_CHECKS = 8
# `scan`: watches started but not yet printed, per check slot (see check_all)
WINDOW_PER_CHECK = 4

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
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.tag_errors


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
    before it are done.

    At most ``window`` (default ``4 * limit``) watches are started and not yet handed over: a
    watch slower than the next ``window - 1`` together holds the rest back rather than letting
    finished results pile up behind it. So a scan of any number of watches holds at most
    ``window`` results and ``limit`` working sets. A check that raises (a bug: expected failures
    are in the result) cancels the others and the exception propagates.
    """
    window = max(limit, window if window is not None else WINDOW_PER_CHECK * limit)
    slots = asyncio.Semaphore(limit)
    pending: collections.deque[asyncio.Task[CheckResult]] = collections.deque()

    async def one(watch: config.WatchSettings) -> CheckResult:
        async with slots:
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
        # on_move: restore: moves whose promised restore has no outcome yet; finished below
        unfinished = await autorestore.unfinished(self.store, watch, records)
        todo = await self._todo(registry, watch, records)
        outcomes = await observe.Observer(registry, self.store, ref).tags(
            todo, records, limit=self.settings.registry(ref.host).max_concurrency
        )
        now = self.clock()
        changes: list[models.Change] = []
        archive: list[models.Manifest] = []
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
            archive.extend(outcome.manifests)
        result.tags_checked = len(outcomes)
        events = await asyncio.to_thread(
            self.store.apply_check,
            ref.name,
            now,
            changes,
            skip_touch=set(result.tag_errors),
            manifests=observe.dedupe(archive),
            error=_summary(result.tag_errors),
        )
        if watch.on_move == "restore":
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

    def _attributed(self, ref: models.ImageRef, change: models.Change) -> models.Change:
        """``change`` with who pushed (``detail["pushed_by"]``) on a move or deletion, when a
        registry notification said so; without one the event says nothing (pusher unknown)."""
        event = change.event
        if self.pushers is None or event is None:
            return change
        if event.kind is models.EventKind.MOVED:
            pusher = self.pushers.who(ref.host, ref.repository, event.tag, event.new_digest)
        elif event.kind is models.EventKind.DELETED:
            pusher = self.pushers.who(
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
        watched = [r for r in current.values() if r.state is not models.TagState.DELETED]
        result.drifted = sorted(
            (r for r in current.values() if r.state is not models.TagState.OK), key=lambda r: r.tag
        )
        m = self.metrics
        m.tags_watched.labels(repository=repository).set(len(watched))
        m.tags_drifted.labels(repository=repository).set(len(result.drifted))
        m.set_drifted_tags(repository, [(r.tag, r.state.value) for r in result.drifted])
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


def _summary(tag_errors: Mapping[str, str]) -> str | None:
    """The watch's error line for a check in which some tags could not be checked, or None."""
    if not tag_errors:
        return None
    return f"{len(tag_errors)} tag(s) could not be checked: " + "; ".join(
        f"{t}: {e}" for t, e in sorted(tag_errors.items())[:3]
    )
