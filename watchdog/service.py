"""The one orchestration point: check a watched repository, end to end.

``check_watch`` loads what is recorded, asks the registry, lets ``detect`` decide, and persists the
records, events and archived manifests of the whole check in one transaction. Per-tag failures
become a log line, a state and a metric; the loop goes on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from watchdog import config, detect, errors, metrics, models, restore
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.service")

T = TypeVar("T")
R = TypeVar("R")

Clock = Callable[[], dt.datetime]

# Watches checked at once (`scan`, and the daemon's slots). Each check holds its repository's
# records, registry answers and archived manifests until its one transaction commits, and a
# database connection while it writes: this bounds memory by a few repositories' working sets and
# SQLite's writers by a few, whatever the number of watches.
MAX_CONCURRENT_CHECKS = 8
# `scan`: watches started but not yet printed, per check slot (see check_all)
WINDOW_PER_CHECK = 4


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Registry(Protocol):
    """What the service needs of a registry client (watchdog.registry.client.RegistryClient)."""

    async def list_tags(self, repository: str) -> list[str]: ...

    async def head_manifest(self, repository: str, reference: str) -> models.ManifestHead: ...

    async def get_manifest(
        self, repository: str, reference: str, *, expected_digest: str | None = None
    ) -> models.Manifest: ...

    async def get_blob(self, repository: str, digest: str) -> bytes: ...

    async def aclose(self) -> None: ...


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


@dataclasses.dataclass
class _Outage:
    """A registry no check has reached since ``since``; ``alerted`` once the alert is queued."""

    since: dt.datetime
    alerted: bool = False


@dataclasses.dataclass
class _TagOutcome:
    observation: models.Observation
    manifests: list[models.Manifest]
    # for a move: created time and revision/source labels of the "old" and "new" image
    images: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.metrics = metrics_
        self.clock = clock
        self.policy = policy
        # registry host -> the outage under way; in memory: a restart starts counting again
        self.outages: dict[str, _Outage] = {}
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
        except errors.WatchdogError as exc:
            result.error = str(exc)
            if isinstance(exc, errors.RegistryError) and exc.temporary:
                unreachable = str(exc)
            log.warning("check_failed repository=%s error=%r", ref.name, str(exc))
            try:
                await asyncio.to_thread(
                    self.store.record_watch_error, ref.name, self.clock(), str(exc)
                )
            except errors.StoreError as store_exc:
                log.warning("record_error_failed repository=%s error=%r", ref.name, str(store_exc))
        result.seconds = time.monotonic() - started
        self.metrics.poll_duration.labels(repository=ref.name).observe(result.seconds)
        self.metrics.checks.labels(registry=ref.host, result="ok" if result.ok else "error").inc()
        if result.ok:
            self.metrics.last_successful_poll.labels(repository=ref.name).set(time.time())
        await self._note_reachability(ref.host, unreachable, answered=result.error is None)
        return result

    async def _note_reachability(self, host: str, error: str | None, *, answered: bool) -> None:
        """Queue ONE alert when no check of ``host`` has reached it for
        ``slack.unreachable_after``, and ONE when a check reaches it again; nothing in between."""
        now = self.clock()
        outage = self.outages.get(host)
        notice: dict[str, str] | None = None
        if error is not None:
            if outage is None:
                outage = self.outages[host] = _Outage(since=now)
            down_for = (now - outage.since).total_seconds()
            if not outage.alerted and down_for >= self.settings.slack.unreachable_after:
                outage.alerted = True
                notice = {
                    "kind": "registry_unreachable",
                    "registry": host,
                    "since": outage.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
                    "error": errors.truncate(error, 300),
                }
        elif answered and outage is not None:
            del self.outages[host]
            if outage.alerted:
                minutes = (now - outage.since).total_seconds() / 60
                notice = {
                    "kind": "registry_recovered",
                    "registry": host,
                    "down_for": f"{minutes:.0f} min" if minutes >= 1 else "under a minute",
                }
        if notice is None:
            return
        log.warning("%s registry=%s", notice["kind"], host)
        try:
            await asyncio.to_thread(self.store.outbox.enqueue_notice, notice, now)
        except errors.StoreError as exc:
            log.warning("notice_not_queued registry=%s error=%r", host, str(exc))
            if outage is not None and notice["kind"] == "registry_unreachable":
                outage.alerted = False  # try again on the next failed check

    async def _check(self, watch: config.WatchSettings, result: CheckResult) -> None:
        ref = watch.repository
        registry = self.clients.get(ref.host)
        records = await asyncio.to_thread(self.store.load_tags, ref.name)
        # on_move: restore: moves that promised a restore ("restoring") and have no outcome yet
        # (the daemon died between the `moved` commit and the outcome's); finished below
        unfinished: dict[str, models.Event] = {}
        if watch.on_move == "restore" and any(
            r.state is models.TagState.DRIFTED for r in records.values()
        ):
            last = await asyncio.to_thread(self.store.last_events_of_drifted, ref.name)
            unfinished = {
                t: e
                for t, e in last.items()
                if e.kind is models.EventKind.MOVED and e.detail.get("restoring") is True
            }
        try:
            listed = await registry.list_tags(ref.repository)
        except errors.NotFound:
            # NAME_UNKNOWN: the repository is gone; each known tag still needs its own definitive 404
            listed = []
        listed_set = set(listed)
        wanted = [t for t in listed if watch.tags.matches(t)]
        # Known tags missing from the listing are asked about directly: absence needs both answers.
        unlisted = [
            t
            for t, r in records.items()
            if t not in listed_set
            and r.state is not models.TagState.DELETED
            and watch.tags.matches(t)
        ]
        todo = [(t, True) for t in wanted] + [(t, False) for t in unlisted]
        outcomes = await _bounded(
            todo,
            lambda item: self._observe(registry, ref, item[0], records.get(item[0]), item[1]),
            limit=self.settings.registry(ref.host).max_concurrency,
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
            change = detect.classify(
                records.get(tag), obs, now, repository=ref.name, tag=tag, policy=self.policy
            )
            if tag in unfinished and _finishes_restore(obs, change):
                resume.append(unfinished[tag])
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
            if change.record is not None or change.event is not None:
                changes.append(change)
            archive.extend(outcome.manifests)
        result.tags_checked = len(outcomes)
        summary = None
        if result.tag_errors:
            summary = f"{len(result.tag_errors)} tag(s) could not be checked: " + "; ".join(
                f"{t}: {e}" for t, e in sorted(result.tag_errors.items())[:3]
            )
        events = await asyncio.to_thread(
            self.store.apply_check,
            ref.name,
            now,
            changes,
            skip_touch=set(result.tag_errors),
            manifests=_dedupe(archive),
            error=summary,
        )
        if watch.on_move == "restore":
            restored = await self._auto_restore(watch, events, resume)
            changes.extend(c for c, _ in restored)
            events = [*events, *(e for _, e in restored)]
        result.events = events
        self._account(ref.name, records, changes, events, result)

    async def _auto_restore(
        self,
        watch: config.WatchSettings,
        events: Sequence[models.Event],
        resume: Sequence[models.Event] = (),
    ) -> list[tuple[models.Change, models.Event]]:
        """Put back every tag that just moved (``on_move: restore``), within loop protection.

        Runs after the check's ``moved`` events are persisted; ``resume`` are earlier ``moved``
        events whose restore never wrote an outcome (a crash), finished the same way (the PUT
        of the same bytes again is harmless). A tag restored ``max_per_tag`` times within the
        ``window`` before it moved is not restored again: one ``restore_stopped`` event (the loud
        "something keeps pushing this tag") is written instead, once per window. Returns the
        changes (a restored record) and events written, for the result and metrics.
        """
        ref = watch.repository
        out: list[tuple[models.Change, models.Event]] = []
        limits = self.settings.restore
        restorer = restore.Restorer(self.store, self.clients.get(ref.host), clock=self.clock)
        todo = [(e, False) for e in events if e.kind is models.EventKind.MOVED]
        for moved, resumed in [*todo, *((e, True) for e in resume)]:
            tag_ref = ref.with_tag(moved.tag)
            # the window before the move: a resumed restore is judged as it was when it moved
            since = moved.at - dt.timedelta(seconds=limits.window)
            done = await asyncio.to_thread(
                self.store.count_events, ref.name, moved.tag, [models.EventKind.RESTORED], since
            )
            if done >= limits.max_per_tag:
                recorded = moved.detail.get("recorded_digest")
                stopped = await self._stop_restoring(
                    tag_ref, done, since, recorded, moved.new_digest, quiet=resumed
                )
                if stopped is not None:
                    out.append((models.Change(ref.name, moved.tag, None, stopped), stopped))
                continue
            if resumed:
                log.warning("restore_resumed ref=%s digest=%s", tag_ref, moved.new_digest)
            outcome = await restorer.run(tag_ref)
            result = "restored" if outcome.restored else "failed"
            self.metrics.restores.labels(repository=ref.name, result=result).inc()
            record = None
            if outcome.restored:
                record = await asyncio.to_thread(self.store.get_tag, ref.name, moved.tag)
            out.append((models.Change(ref.name, moved.tag, record, outcome.event), outcome.event))
        return out

    async def _stop_restoring(
        self,
        tag_ref: models.ImageRef,
        done: int,
        since: dt.datetime,
        recorded: object,
        current: str | None,
        *,
        quiet: bool = False,
    ) -> models.Event | None:
        """Write the one ``restore_stopped`` event of this window (None when already written;
        ``quiet``: then without the log line, for a move judged again at every check). Its old
        digest is the record (what Restore puts back), its new one what the tag answers now (what
        Accept would record)."""
        assert tag_ref.tag is not None
        already = await asyncio.to_thread(
            self.store.count_events,
            tag_ref.name,
            tag_ref.tag,
            [models.EventKind.RESTORE_STOPPED],
            since,
        )
        if already and quiet:
            return None
        log.error(
            "restore_stopped ref=%s reason=%r",
            tag_ref,
            "something keeps pushing this tag",
        )
        if already:
            return None
        now = self.clock()
        limits = self.settings.restore
        event = models.Event(
            tag_ref.name,
            tag_ref.tag,
            models.EventKind.RESTORE_STOPPED,
            now,
            old_digest=recorded if isinstance(recorded, str) else None,
            new_digest=current,
            detail={
                "reason": "something keeps pushing this tag",
                "recorded_digest": recorded,
                "restores": done,
                "max_per_tag": limits.max_per_tag,
                "window_seconds": limits.window,
                "loud": True,
            },
            actor=restore.ACTOR_AUTO,
        )
        change = models.Change(tag_ref.name, tag_ref.tag, None, event)
        (saved,) = await asyncio.to_thread(self.store.apply_changes, tag_ref.name, now, [change])
        return saved

    def _account(
        self,
        repository: str,
        records: dict[str, models.TagRecord],
        changes: Sequence[models.Change],
        events: Sequence[models.Event],
        result: CheckResult,
    ) -> None:
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

    async def _observe(
        self,
        registry: Registry,
        ref: models.ImageRef,
        tag: str,
        record: models.TagRecord | None,
        listed: bool,
    ) -> _TagOutcome:
        """Ask the registry about one tag. Never raises for registry failures: they are ERROR."""
        try:
            head = await registry.head_manifest(ref.repository, tag)
        except errors.NotFound:
            if listed:
                # Listed but unknown: the registry contradicts itself; that is no definitive answer.
                return _TagOutcome(
                    models.Observation.failed("listed in tags/list but manifest unknown"), []
                )
            return _TagOutcome(models.Observation.absent(), [])
        except errors.RegistryError as exc:
            return _TagOutcome(models.Observation.failed(str(exc)), [])
        if record is not None and head.digest is not None and head.digest == record.current_digest:
            # Unchanged: HEAD is enough (and does not count against Docker Hub's pull limit).
            return _TagOutcome(models.Observation.present(head.digest, head.media_type), [])
        # New or different (or no digest header): only a GET-verified digest counts.
        try:
            manifest = await registry.get_manifest(ref.repository, tag)
            manifests = [manifest, *await self._children(registry, ref, manifest)]
        except errors.NotFound:
            return _TagOutcome(
                models.Observation.failed("manifest vanished between HEAD and GET"), []
            )
        except errors.RegistryError as exc:
            return _TagOutcome(models.Observation.failed(str(exc)), [])
        contradiction = _contradiction(head, manifest, record, listed)
        if contradiction is not None:
            return _TagOutcome(models.Observation.failed(contradiction), [])
        platforms: tuple[str, ...] = ()
        images: dict[str, dict[str, str]] = {}
        if (
            record is not None
            and record.current_digest
            and manifest.digest != record.current_digest
        ):
            platforms = await self._changed_platforms(ref.name, record.current_digest, manifest)
            images = await self._images(registry, ref, record.current_digest, manifests)
        obs = models.Observation.present(manifest.digest, manifest.media_type, platforms)
        return _TagOutcome(obs, manifests, images)

    async def _images(
        self,
        registry: Registry,
        ref: models.ImageRef,
        old_digest: str,
        new: Sequence[models.Manifest],
    ) -> dict[str, dict[str, str]]:
        """The created time and ``org.opencontainers.image.revision``/``source`` labels of the old
        and the new image (of an index: its linux/amd64 child, else its first platform), for the
        move alert. Best effort: a side whose manifest or config blob is gone is left out; never
        raises for registry or store failures."""
        fetched = {m.digest: m for m in new}

        async def manifest(digest: str) -> models.Manifest | None:
            found = fetched.get(digest)
            if found is None:
                found = await asyncio.to_thread(self.store.get_manifest, ref.name, digest)
            return found

        out: dict[str, dict[str, str]] = {}
        for side, digest in (("old", old_digest), ("new", new[0].digest)):
            try:
                top = await manifest(digest)
                if top is not None and media.is_index(top.media_type):
                    children = media.platforms(top.body)
                    child = children.get("linux/amd64") or next(iter(children.values()), None)
                    top = await manifest(child) if child else None
                if top is None:
                    continue
                config_desc = media.parse_manifest(top.body).get("config")
                if not isinstance(config_desc, dict) or not isinstance(
                    config_desc.get("digest"), str
                ):
                    continue
                blob = await registry.get_blob(ref.repository, config_desc["digest"])
                out[side] = _image_info(blob)
            except (errors.WatchdogError, ValueError) as exc:
                log.info("image_info_unavailable ref=%s side=%s error=%r", ref.name, side, str(exc))
        return {side: info for side, info in out.items() if info}

    async def _children(
        self, registry: Registry, ref: models.ImageRef, manifest: models.Manifest
    ) -> list[models.Manifest]:
        """Every child manifest of an index, fetched by digest and verified (for the archive)."""
        if not media.is_index(manifest.media_type):
            return []
        children = []
        for digest, _ in media.children(manifest.body):
            children.append(
                await registry.get_manifest(ref.repository, digest, expected_digest=digest)
            )
        return children

    async def _changed_platforms(
        self, repository: str, old_digest: str, new: models.Manifest
    ) -> tuple[str, ...]:
        old = await asyncio.to_thread(self.store.get_manifest, repository, old_digest)
        old_platforms = _platforms(old) if old is not None else {}
        new_platforms = _platforms(new)
        if not old_platforms and not new_platforms:
            return ()
        return detect.changed_platforms(old_platforms, new_platforms)


def _finishes_restore(obs: models.Observation, change: models.Change) -> bool:
    """For a tag whose restore was promised and not done: True when this observation leaves it
    to the restore (the tag still answers the moved digest, or the recorded one again), False
    when something else happened (moved again, gone, not answering)."""
    if obs.kind is not models.ObservationKind.PRESENT:
        return False
    return change.event is None or change.event.kind is models.EventKind.REVERTED


def _contradiction(
    head: models.ManifestHead,
    manifest: models.Manifest,
    record: models.TagRecord | None,
    listed: bool,
) -> str | None:
    """Why a verified manifest is still no evidence of a change, or None when it is.

    A GET-verified body proves only that the registry served those bytes, not that the tag
    points at them: a confused cache or proxy can serve another image's valid manifest, with a
    matching digest header. So the registry must agree with itself: the HEAD's digest (when it
    sent one) is the GET's, and a tag missing from tags/list may confirm its recorded digest but
    not announce another one.
    """
    if head.digest is not None and head.digest != manifest.digest:
        return (
            f"the registry contradicts itself: HEAD answered {head.digest}, "
            f"GET served {manifest.digest}"
        )
    if not listed and (record is None or manifest.digest != record.current_digest):
        return f"not in tags/list, yet the manifest answers {manifest.digest}"
    return None


def _image_info(config_blob: bytes) -> dict[str, str]:
    """``created``, ``revision`` and ``source`` of an image config blob, those it has."""
    doc = json.loads(config_blob)
    if not isinstance(doc, dict):
        return {}
    out: dict[str, str] = {}
    if isinstance(doc.get("created"), str):
        out["created"] = doc["created"]
    inner = doc.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    if isinstance(labels, dict):
        for key in ("revision", "source"):
            value = labels.get(f"org.opencontainers.image.{key}")
            if isinstance(value, str) and value:
                out[key] = value[:500]
    return out


def _platforms(manifest: models.Manifest) -> dict[str, str]:
    if not media.is_index(manifest.media_type):
        return {}
    try:
        return media.platforms(manifest.body)
    except errors.ProtocolError:
        return {}


def _dedupe(manifests: Iterable[models.Manifest]) -> list[models.Manifest]:
    seen: dict[str, models.Manifest] = {}
    for m in manifests:
        seen.setdefault(m.digest, m)
    return list(seen.values())


async def _bounded(items: Sequence[T], fn: Callable[[T], Awaitable[R]], *, limit: int) -> list[R]:
    """``[await fn(i) for i in items]`` with at most ``limit`` in flight, results in order.

    A fixed pool of workers instead of one task per item keeps memory flat for 100,000 tags.
    """
    results: dict[int, R] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(items):
            i = next_index
            next_index += 1
            results[i] = await fn(items[i])

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(limit, len(items))))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        raise
    return [results[i] for i in range(len(items))]
