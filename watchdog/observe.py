"""What the registry says about the tags of one repository, for ``detect`` to judge.

HEAD first (it does not count against Docker Hub's pull limit); a GET-verified digest only when
the tag is new or the HEAD differs from the record; every child of an index not archived yet
fetched by digest, a few at a time, and streamed to the archive with the index (small
transactions of their own, before the check writes any record: so memory stays bounded whatever
the index's size, and a record never points to an archive missing a child); for a move, which platforms changed and what the old and new images' config blobs
say about themselves. Never raises for registry failures: they are ERROR observations.

Observation talks to the registry only: the archive it reads and streams to is the small
``Archive`` protocol, never the store itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Protocol, TypeVar

from watchdog import detect, errors, models, safejson
from watchdog.registry import media, resolve

# the check's logger: these lines are part of the check's log, and pipelines filter on it
log = logging.getLogger("watchdog.service")

T = TypeVar("T")
R = TypeVar("R")

# Children of an index being fetched at once, per check, weighed by the size their index
# declares: a budget in bytes, so up to max_concurrency small children are fetched together but
# only a few 4 MB ones (the OCI limit a registry must accept): memory stays flat whatever the index.
CHILD_BYTES_IN_FLIGHT = 16 * 1024 * 1024
# Fetched manifests are written to the archive once this many bytes or manifests wait.
SPOOL_BYTES = 8 * 1024 * 1024
SPOOL_COUNT = 500


class Registry(Protocol):
    """What observation needs of a registry client (watchdog.registry.client.RegistryClient)."""

    async def head_manifest(self, repository: str, reference: str) -> models.ManifestHead: ...

    async def get_manifest(
        self, repository: str, reference: str, *, expected_digest: str | None = None
    ) -> models.Manifest: ...

    async def get_blob(self, repository: str, digest: str) -> bytes: ...


class Archive(Protocol):
    """Where manifests seen before are kept (watchdog.store.repo.Store); called in a thread."""

    def get_manifest(self, repository: str, digest: str) -> models.Manifest | None: ...

    def archived_digests(self, repository: str, digests: Collection[str]) -> set[str]: ...

    def archive_manifests(
        self, repository: str, manifests: Sequence[models.Manifest], now: dt.datetime
    ) -> None: ...


@dataclasses.dataclass
class TagOutcome:
    """One tag's observation. A PRESENT observation with a newly fetched manifest means that
    manifest (and, for an index, every child) is in the archive already."""

    observation: models.Observation
    # for a move: created time and revision/source labels of the "old" and "new" image
    images: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


class _Budget:
    """A semaphore counted in bytes: ``hold(n)`` waits until ``n`` more fit (one item larger
    than the whole budget goes alone)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        amount = max(1, min(amount, self.capacity))
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + amount <= self.capacity)
            self.used += amount
        try:
            yield
        finally:
            async with self._cond:
                self.used -= amount
                self._cond.notify_all()


class _Spool:
    """Manifests on their way to the archive, written in small batches (SPOOL_BYTES or
    SPOOL_COUNT, whichever comes first), each batch its own transaction."""

    def __init__(self, archive: Archive, repository: str, clock: models.Clock) -> None:
        self._archive, self._repository, self._clock = archive, repository, clock
        self._batch: list[models.Manifest] = []
        self._bytes = 0
        self._lock = asyncio.Lock()

    async def add(self, manifest: models.Manifest) -> None:
        self._batch.append(manifest)
        self._bytes += len(manifest.body)
        if self._bytes >= SPOOL_BYTES or len(self._batch) >= SPOOL_COUNT:
            await self.flush()  # the caller waits: fetching cannot outrun the archive

    async def flush(self) -> None:
        async with self._lock:
            batch, self._batch, self._bytes = self._batch, [], 0
            if batch:
                await asyncio.to_thread(
                    self._archive.archive_manifests, self._repository, batch, self._clock()
                )


@dataclasses.dataclass(frozen=True)
class Observer:
    """Asks ``registry`` about tags of ``ref``'s repository; ``archive`` has the old manifests
    and receives the new ones. One Observer per check: its byte budget for children is shared
    by the check's tags."""

    registry: Registry
    archive: Archive
    ref: models.ImageRef
    clock: models.Clock = models.utcnow
    # children of one index fetched at once (the registry's max_concurrency), within the budget
    children_limit: int = 8
    _budget: _Budget = dataclasses.field(
        default_factory=lambda: _Budget(CHILD_BYTES_IN_FLIGHT),
        init=False,
        repr=False,
        compare=False,
    )

    async def tags(
        self,
        todo: Sequence[tuple[str, bool]],
        records: Mapping[str, models.TagRecord],
        *,
        limit: int,
    ) -> list[TagOutcome]:
        """``tag()`` of every ``(tag, listed)`` in ``todo``, at most ``limit`` at once, in order."""
        return await bounded(
            todo, lambda item: self.tag(item[0], records.get(item[0]), listed=item[1]), limit=limit
        )

    async def tag(self, tag: str, record: models.TagRecord | None, *, listed: bool) -> TagOutcome:
        """Ask the registry about one tag (``listed``: it is in tags/list). Never raises for
        registry failures: they are ERROR."""
        registry, ref = self.registry, self.ref
        known = record.current_digest if record is not None else None
        try:
            # Unchanged: the HEAD is enough. New or different (or no digest header): only a
            # GET-verified digest that the HEAD agrees with counts (resolve_digest).
            resolved = await resolve.resolve_digest(
                registry, ref.repository, tag, verify=True, known=known
            )
        except errors.NotFound:
            if listed:
                # Listed but unknown: the registry contradicts itself; that is no definitive answer.
                return TagOutcome(
                    models.Observation.failed("listed in tags/list but manifest unknown")
                )
            return TagOutcome(models.Observation.absent())
        except errors.RegistryError as exc:
            return TagOutcome(models.Observation.failed(str(exc)))
        manifest = resolved.manifest
        if manifest is None:
            return TagOutcome(models.Observation.present(resolved.digest, resolved.media_type))
        why_not = contradiction(manifest, record, listed)
        if why_not is not None:
            return TagOutcome(models.Observation.failed(why_not))
        try:
            await self._archive(manifest)
        except errors.RegistryError as exc:
            # a child that cannot be had: no record may point at an index missing it
            return TagOutcome(models.Observation.failed(str(exc)))
        changed: tuple[str, ...] = ()
        images: dict[str, dict[str, str]] = {}
        if (
            record is not None
            and record.current_digest
            and manifest.digest != record.current_digest
        ):
            changed = await self._changed_platforms(record.current_digest, manifest)
            images = await self._images(record.current_digest, manifest)
        obs = models.Observation.present(manifest.digest, manifest.media_type, changed)
        return TagOutcome(obs, images)

    async def _images(self, old_digest: str, new: models.Manifest) -> dict[str, dict[str, str]]:
        """The created time and ``org.opencontainers.image.revision``/``source`` labels of the old
        and the new image (of an index: its linux/amd64 child, else its first platform), for the
        move alert. Best effort: a side whose manifest or config blob is gone is left out; never
        raises for registry or store failures."""
        ref = self.ref

        async def manifest(digest: str) -> models.Manifest | None:
            if digest == new.digest:
                return new
            # the new index's children are archived by now (Observer._archive)
            return await asyncio.to_thread(self.archive.get_manifest, ref.name, digest)

        out: dict[str, dict[str, str]] = {}
        for side, digest in (("old", old_digest), ("new", new.digest)):
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
                blob = await self.registry.get_blob(ref.repository, config_desc["digest"])
                out[side] = image_info(blob)
            except (errors.WatchdogError, ValueError) as exc:
                log.info("image_info_unavailable ref=%s side=%s error=%r", ref.name, side, str(exc))
        return {side: info for side, info in out.items() if info}

    async def _archive(self, manifest: models.Manifest) -> None:
        """Put ``manifest`` and, for an index, every child it lists into the archive, fetching
        (by digest, verified) only the children it does not hold yet: ``children_limit`` at once
        within the check's byte budget, written in small batches as they come, the index last.

        Raises RegistryError when a child cannot be fetched or the index cannot be read (the
        children already archived stay: verified bytes, harmless), StoreError when the archive
        cannot be written.
        """
        children = child_sizes(manifest.body) if media.is_index(manifest.media_type) else {}
        have = await asyncio.to_thread(
            self.archive.archived_digests, self.ref.name, [manifest.digest, *children]
        )
        spool = _Spool(self.archive, self.ref.name, self.clock)

        async def fetch(item: tuple[str, int]) -> None:
            digest, size = item
            async with self._budget.hold(size):
                child = await self.registry.get_manifest(
                    self.ref.repository, digest, expected_digest=digest
                )
                await spool.add(child)

        todo = [(d, size) for d, size in children.items() if d not in have]
        try:
            await bounded(todo, fetch, limit=self.children_limit)
        except errors.RegistryError:
            # what was fetched is verified: keep it, so the next look fetches only the rest
            await spool.flush()
            raise
        if manifest.digest not in have:
            await spool.add(manifest)
        await spool.flush()

    async def _changed_platforms(self, old_digest: str, new: models.Manifest) -> tuple[str, ...]:
        old = await asyncio.to_thread(self.archive.get_manifest, self.ref.name, old_digest)
        old_platforms = platforms(old) if old is not None else {}
        new_platforms = platforms(new)
        if not old_platforms and not new_platforms:
            return ()
        return detect.changed_platforms(old_platforms, new_platforms)


def child_sizes(index_body: bytes) -> dict[str, int]:
    """Every child an index lists, each once, in order: digest -> the size its descriptor
    declares (MAX_MANIFEST_BYTES when missing or out of range; a lie only costs the budget).

    Raises ProtocolError for an index that cannot be read or a child digest outside the sha256
    grammar (it would reach a URL).
    """
    digests = [digest for digest, _ in media.children(index_body)]
    entries = media.parse_manifest(index_body).get("manifests") or []
    out: dict[str, int] = {}
    for digest, entry in zip(digests, entries, strict=True):
        if not models.is_digest(digest):
            raise errors.ProtocolError(
                f"the index lists a child that is not a sha256 digest: {digest[:80]!a}"
            )
        size = entry.get("size")
        declared = (
            size
            if isinstance(size, int)
            and not isinstance(size, bool)
            and 0 < size <= media.MAX_MANIFEST_BYTES
            else media.MAX_MANIFEST_BYTES
        )
        out.setdefault(digest, declared)
    return out


def contradiction(
    manifest: models.Manifest, record: models.TagRecord | None, listed: bool
) -> str | None:
    """Why a verified manifest is still no evidence of a change, or None when it is.

    A GET-verified body proves only that the registry served those bytes, not that the tag
    points at them: a confused cache or proxy can serve another image's valid manifest, with a
    matching digest header. So the registry must agree with itself: the HEAD's digest (when it
    sent one) is the GET's (``resolve.resolve_digest`` refuses otherwise), and a tag missing from
    tags/list may confirm its recorded digest but not announce another one.
    """
    if not listed and (record is None or manifest.digest != record.current_digest):
        return f"not in tags/list, yet the manifest answers {manifest.digest}"
    return None


def image_info(config_blob: bytes) -> dict[str, str]:
    """``created``, ``revision`` and ``source`` of an image config blob, those it has.

    Raises ValueError when the blob is not JSON; values of the wrong type are left out, labels
    cut to 500 characters."""
    doc = safejson.loads(config_blob)
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


def platforms(manifest: models.Manifest) -> dict[str, str]:
    """The platform children (``os/arch[/variant]`` -> digest) of an index; ``{}`` for a single
    image or an index whose body cannot be read."""
    if not media.is_index(manifest.media_type):
        return {}
    try:
        return media.platforms(manifest.body)
    except errors.ProtocolError:
        return {}


async def bounded(items: Sequence[T], fn: Callable[[T], Awaitable[R]], *, limit: int) -> list[R]:
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
