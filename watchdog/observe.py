"""What the registry says about the tags of one repository, for ``detect`` to judge.

HEAD first (it does not count against Docker Hub's pull limit); a GET-verified digest only when
the tag is new or the HEAD differs from the record; every child of an index fetched by digest for
the archive; for a move, which platforms changed and what the old and new images' config blobs
say about themselves. Never raises for registry failures: they are ERROR observations.

Observation talks to the registry only: the archived manifests it compares with come through
the small ``Archive`` protocol, never the store itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from watchdog import detect, errors, models, safejson
from watchdog.registry import media, resolve

# the check's logger: these lines are part of the check's log, and pipelines filter on it
log = logging.getLogger("watchdog.service")

T = TypeVar("T")
R = TypeVar("R")


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


@dataclasses.dataclass
class TagOutcome:
    """One tag's observation, and the manifests fetched for it (for the archive)."""

    observation: models.Observation
    manifests: list[models.Manifest]
    # for a move: created time and revision/source labels of the "old" and "new" image
    images: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Observer:
    """Asks ``registry`` about tags of ``ref``'s repository; ``archive`` has the old manifests."""

    registry: Registry
    archive: Archive
    ref: models.ImageRef

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
                    models.Observation.failed("listed in tags/list but manifest unknown"), []
                )
            return TagOutcome(models.Observation.absent(), [])
        except errors.RegistryError as exc:
            return TagOutcome(models.Observation.failed(str(exc)), [])
        manifest = resolved.manifest
        if manifest is None:
            return TagOutcome(models.Observation.present(resolved.digest, resolved.media_type), [])
        try:
            manifests = [manifest, *await self._children(manifest)]
        except errors.RegistryError as exc:
            return TagOutcome(models.Observation.failed(str(exc)), [])
        why_not = contradiction(manifest, record, listed)
        if why_not is not None:
            return TagOutcome(models.Observation.failed(why_not), [])
        changed: tuple[str, ...] = ()
        images: dict[str, dict[str, str]] = {}
        if (
            record is not None
            and record.current_digest
            and manifest.digest != record.current_digest
        ):
            changed = await self._changed_platforms(record.current_digest, manifest)
            images = await self._images(record.current_digest, manifests)
        obs = models.Observation.present(manifest.digest, manifest.media_type, changed)
        return TagOutcome(obs, manifests, images)

    async def _images(
        self, old_digest: str, new: Sequence[models.Manifest]
    ) -> dict[str, dict[str, str]]:
        """The created time and ``org.opencontainers.image.revision``/``source`` labels of the old
        and the new image (of an index: its linux/amd64 child, else its first platform), for the
        move alert. Best effort: a side whose manifest or config blob is gone is left out; never
        raises for registry or store failures."""
        ref = self.ref
        fetched = {m.digest: m for m in new}

        async def manifest(digest: str) -> models.Manifest | None:
            found = fetched.get(digest)
            if found is None:
                found = await asyncio.to_thread(self.archive.get_manifest, ref.name, digest)
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
                blob = await self.registry.get_blob(ref.repository, config_desc["digest"])
                out[side] = image_info(blob)
            except (errors.WatchdogError, ValueError) as exc:
                log.info("image_info_unavailable ref=%s side=%s error=%r", ref.name, side, str(exc))
        return {side: info for side, info in out.items() if info}

    async def _children(self, manifest: models.Manifest) -> list[models.Manifest]:
        """Every child manifest of an index, fetched by digest and verified (for the archive)."""
        if not media.is_index(manifest.media_type):
            return []
        children = []
        for digest, _ in media.children(manifest.body):
            children.append(
                await self.registry.get_manifest(
                    self.ref.repository, digest, expected_digest=digest
                )
            )
        return children

    async def _changed_platforms(self, old_digest: str, new: models.Manifest) -> tuple[str, ...]:
        old = await asyncio.to_thread(self.archive.get_manifest, self.ref.name, old_digest)
        old_platforms = platforms(old) if old is not None else {}
        new_platforms = platforms(new)
        if not old_platforms and not new_platforms:
            return ()
        return detect.changed_platforms(old_platforms, new_platforms)


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


def dedupe(manifests: Iterable[models.Manifest]) -> list[models.Manifest]:
    """``manifests`` without repeated digests, first ones kept, in order."""
    seen: dict[str, models.Manifest] = {}
    for m in manifests:
        seen.setdefault(m.digest, m)
    return list(seen.values())


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
