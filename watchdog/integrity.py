"""Integrity: a release that still answers its recorded digest but can no longer be pulled whole.

A registry cleanup can take part of a release and leave its tag answering: distribution's
``garbage-collect --delete-untagged`` removes the platform manifests of still-tagged multi-arch
images, a delete by digest of a child manifest, a blob lost in storage. The tag's HEAD still answers
the recorded digest, so the regular check sees nothing. Here every recorded release is checked once
per ``integrity.interval`` (default 24 h), the releases spread evenly over it: a HEAD of each child
manifest of an index and of each distinct config and layer blob (no GET: the manifests come from
the archive). What is gone makes the tag ``broken`` (a ``broken`` event and its alert;
``detect.integrity`` decides), and a watch whose ``on_delete`` policy (by default its ``on_move``)
is ``restore`` has it repaired through ``autorestore`` (loop protection included): archived child
manifests are re-PUT. A missing blob cannot be repaired from the manifest archive (it holds no
layers): the repair fails with that reason, and only a copy kept elsewhere (the vault, issue 12)
can bring it back.

Cost: per release and interval, one HEAD per child manifest plus one per distinct blob (a
two-platform image of 5 layers each: 2 + 2 * 6 = 14 HEADs); blob HEADs found missing are
confirmed with a one-byte GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from watchdog import autorestore, config, detect, errors, metrics, models
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import repo as store_repo

log = logging.getLogger("watchdog.integrity")

K = models.EventKind
# How often the daemon's sweep runs: a 96th of the interval (15 min for the default 24 h), at
# least every second and at most every 15 minutes, so each run checks ~1% of the releases.
MAX_TICK = 900.0

Hold = Callable[[str], contextlib.AbstractAsyncContextManager[None]]


def tick_seconds(interval: float) -> float:
    """How often the sweep runs for ``interval``."""
    return min(max(interval / 96, 1.0), MAX_TICK)


def offset(repository: str, tag: str, interval: float) -> float:
    """Where in each interval the release is checked: a stable point in ``[0, interval)`` from
    its name, so releases spread evenly and every replica and restart agrees."""
    h = int.from_bytes(hashlib.sha256(f"{repository}:{tag}".encode()).digest()[:8], "big")
    return (h / 2**64) * interval


def due(
    records: Sequence[models.TagRecord], interval: float, start: float, end: float
) -> list[models.TagRecord]:
    """The releases (``ok`` or ``broken``) whose point falls in ``(start, end]`` (epoch seconds),
    each interval over again; all of them when the span is an interval or longer."""
    wanted = [r for r in records if r.state in (models.TagState.OK, models.TagState.BROKEN)]
    if end - start >= interval:
        return wanted
    lo, hi = start % interval, end % interval
    out = []
    for record in wanted:
        at = offset(record.repository, record.tag, interval)
        if (lo < at <= hi) if lo <= hi else (at > lo or at <= hi):
            out.append(record)
    return out


@dataclasses.dataclass
class Finding:
    """What the HEADs found about one release."""

    missing_children: list[str] = dataclasses.field(default_factory=list)
    missing_blobs: list[str] = dataclasses.field(default_factory=list)
    requests: int = 0


async def inspect(
    registry: registry_client.RegistryClient,
    store: store_repo.Store,
    record: models.TagRecord,
    path: str,
    blobs_seen: dict[str, bool] | None = None,
) -> Finding:
    """HEAD every child manifest and blob of ``record``'s recorded digest (manifests from the
    archive, else GET by digest). ``blobs_seen`` caches blob answers across the releases of one
    repository in one sweep. Raises RegistryError when the registry cannot say (no change then).
    """
    seen = {} if blobs_seen is None else blobs_seen
    finding = Finding()
    top = await _manifest(registry, store, record.repository, path, record.recorded_digest)
    if top is None:
        # neither archived nor served by digest although the tag answers it: the check's job
        raise errors.ProtocolError(
            f"manifest {record.recorded_digest} is neither archived nor served"
        )
    images = [top]
    if media.is_index(top.media_type):
        images = []
        for child_digest, _ in media.children(top.body):
            finding.requests += 1
            present = await registry.manifest_exists(path, child_digest)
            if not present:
                finding.missing_children.append(child_digest)
            child = await _manifest(registry, store, record.repository, path, child_digest, present)
            if child is not None and not media.is_index(child.media_type):
                images.append(child)
    for image in images:
        for blob in media.blobs(image.body):
            if blob not in seen:
                finding.requests += 1
                seen[blob] = await registry.head_blob(path, blob)
            if not seen[blob] and blob not in finding.missing_blobs:
                finding.missing_blobs.append(blob)
    return finding


async def _manifest(
    registry: registry_client.RegistryClient,
    store: store_repo.Store,
    name: str,
    path: str,
    digest: str,
    in_registry: bool = True,
) -> models.Manifest | None:
    archived = await asyncio.to_thread(store.get_manifest, name, digest)
    if archived is not None or not in_registry:
        return archived
    try:
        return await registry.get_manifest(path, digest, expected_digest=digest)
    except errors.NotFound:
        return None


@contextlib.asynccontextmanager
async def _no_hold(repository: str) -> AsyncIterator[None]:
    yield


class Sweeper:
    """Checks the integrity of every watched release, a slice of them per ``tick``."""

    def __init__(
        self,
        settings: config.Settings,
        store: store_repo.Store,
        registry_for: Callable[[str], registry_client.RegistryClient],
        restorer: autorestore.AutoRestorer,
        *,
        clock: Callable[[], dt.datetime],
        metrics_: metrics.Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics_  # incidents opened by broken releases are counted
        self.store = store
        self.registry_for = registry_for
        self.restorer = restorer
        self.clock = clock
        self.interval = settings.integrity.interval
        self.last: float | None = None

    async def tick(self, hold: Hold = _no_hold) -> list[models.Event]:
        """Check the releases due since the last tick (the first tick: one tick's worth), each
        watch held by ``hold`` (the daemon's lock and claim) while it is checked and written.
        A watch that cannot be held now is left for its next turn."""
        now = self.clock().timestamp()
        start = self.last if self.last is not None else now - tick_seconds(self.interval)
        self.last = now
        events: list[models.Event] = []
        for watch in self.settings.watches:
            try:
                async with hold(watch.name):
                    events += await self.check_watch(watch, start, now)
            except errors.StoreError as exc:
                log.warning("integrity_skipped repository=%s error=%r", watch.name, str(exc))
        return events

    async def check_watch(
        self, watch: config.WatchSettings, start: float | None = None, end: float | None = None
    ) -> list[models.Event]:
        """Check the releases of ``watch`` due in ``(start, end]`` (all of them without a span),
        write what changed, repair under the watch's policy. Returns the events written."""
        records = await asyncio.to_thread(self.store.load_tags, watch.name)
        todo = list(records.values())
        if start is not None and end is not None:
            todo = due(todo, self.interval, start, end)
        registry = self.registry_for(watch.repository.host)
        now = self.clock()
        changes: list[models.Change] = []
        resume: list[models.Event] = []
        seen: dict[str, bool] = {}
        requests = 0
        for record in todo:
            try:
                finding = await inspect(
                    registry, self.store, record, watch.repository.repository, seen
                )
            except errors.RegistryError as exc:
                log.warning("integrity_unknown ref=%s error=%r", record.ref, str(exc))
                continue
            requests += finding.requests
            # a lost blob comes back only from a kept copy in the vault
            in_vault = bool(finding.missing_blobs) and bool(
                await asyncio.to_thread(self.store.vault.kept, watch.name, record.recorded_digest)
            )
            change = detect.integrity(
                record, finding.missing_children, finding.missing_blobs, now, in_vault=in_vault
            )
            event = change.event
            if event is not None:
                if event.kind is K.BROKEN:
                    detail = {**event.detail, **autorestore.policy_detail(watch, K.BROKEN)}
                    event = dataclasses.replace(event, detail=detail)
                    change = dataclasses.replace(change, event=event)
                changes.append(change)
                log.warning(
                    "tag_%s ref=%s missing_children=%d missing_blobs=%d",
                    event.kind.value,
                    record.ref,
                    len(finding.missing_children),
                    len(finding.missing_blobs),
                )
            elif record.state is models.TagState.BROKEN:
                resume += await self._unrepaired(watch, record)
        log.info("integrity_checked repository=%s releases=%d requests=%d", watch.name, len(todo), requests)  # fmt: skip
        events = await asyncio.to_thread(self.store.apply_changes, watch.name, now, changes)
        if self.metrics is not None:
            self.metrics.count_incidents(events)
        if K.BROKEN in autorestore.wanted(watch) and (events or resume):
            events += [e for _, e in await self.restorer.run(watch, events, resume)]
        return events

    async def _unrepaired(
        self, watch: config.WatchSettings, record: models.TagRecord
    ) -> list[models.Event]:
        """The ``broken`` event of a still-broken tag whose repair never wrote an outcome (a
        crash), on a watch that repairs: it is repaired now. A repair that failed is not tried
        again every interval (a person decides, or the vault)."""
        if K.BROKEN not in autorestore.wanted(watch):
            return []
        history = await asyncio.to_thread(self.store.history, watch.name, record.tag)
        return [history[-1]] if history and history[-1].kind is K.BROKEN else []
