"""Copy a release between repositories, byte for byte: blobs, child manifests, the index, a tag.

Used by the vault (source -> vault) and by restore (vault -> source). On one registry a blob is
mounted (no bytes move, one request); otherwise, or when the registry answers a mount with an
upload session, it is streamed in ``CHUNK`` pieces (ranged GETs, chunked PATCH uploads), never
more than one piece in memory, its sha256 computed on the way and compared with the digest before
the upload is committed. Manifests are PUT children first, then the index (by digest, or as the
tag last), so a registry never holds an index whose children it lacks.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
from collections.abc import Callable

from watchdog import errors, models
from watchdog.registry import client as registry_client
from watchdog.registry import media, resolve, uploads

log = logging.getLogger("watchdog.registry.copy")

CHUNK = 8 * 1024 * 1024

Client = registry_client.RegistryClient

MOUNTED = "mounted"
STREAMED = "streamed"
PRESENT = "present"


@dataclasses.dataclass
class Report:
    """What one release copy did: blobs by how they got there, manifests PUT, bytes moved."""

    mounted: int = 0
    streamed: int = 0
    present: int = 0
    manifests: int = 0
    bytes_streamed: int = 0

    def count(self, how: str) -> None:
        if how == MOUNTED:
            self.mounted += 1
        elif how == STREAMED:
            self.streamed += 1
        else:
            self.present += 1


async def copy_blob(
    src: Client,
    src_repo: str,
    dst: Client,
    dst_repo: str,
    digest: str,
    *,
    chunk: int = CHUNK,
    report: Report | None = None,
) -> str:
    """Make blob ``digest`` of ``src``/``src_repo`` exist in ``dst``/``dst_repo``; return how:
    ``mounted`` (same registry, one request), ``streamed`` or ``present`` (already there).

    Raises NotFound when the source no longer has it, ProtocolError when the bytes streamed do
    not hash to ``digest`` (nothing is committed then) or the registry refuses, AuthError for
    missing rights, RegistryUnavailable for outages.
    """
    location = None
    if src is dst:
        # A mount of a blob already there answers 201 too: no HEAD first, one request per blob.
        location = await uploads.Uploads(dst).mount(dst_repo, digest, src_repo)
        if location is None:
            return _counted(report, MOUNTED)
    elif await dst.head_blob(dst_repo, digest):
        return _counted(report, PRESENT)
    if location is None:
        location = await uploads.Uploads(dst).start(dst_repo)
    hasher = hashlib.sha256()
    offset = 0
    total: int | None = None
    while total is None or offset < total:
        data, length = await uploads.Uploads(src).read(src_repo, digest, offset, chunk)
        total = length if length is not None else total
        short = len(data) < chunk
        if data:
            hasher.update(data)
            location = await uploads.Uploads(dst).chunk(dst_repo, location, data, offset)
            offset += len(data)
        del data
        # httpx's request and response of each exchange refer to each other, so the chunk a PATCH
        # sent lives until the cyclic GC runs, and that counts objects, not bytes: measured, a
        # 64 MB copy peaked at 49 MB of Python memory (growing with the blob) without this, and
        # at 25 MB (three chunks, whatever the blob) with it. A young-generation pass costs
        # microseconds beside moving 8 MiB.
        gc.collect(0)
        if short:
            break  # the end, when the registry did not say the length
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        raise errors.ProtocolError(
            f"blob {digest} of {src.name}/{src_repo} streamed {offset} bytes hashing to {actual}: "
            "not committed",
            registry=src.name,
        )
    await uploads.Uploads(dst).finish(dst_repo, location, digest)
    if report is not None:
        report.bytes_streamed += offset
    return _counted(report, STREAMED)


async def copy_image_blobs(
    src: Client,
    src_repo: str,
    dst: Client,
    dst_repo: str,
    manifest: models.Manifest,
    report: Report,
    *,
    chunk: int = CHUNK,
) -> None:
    """Copy the config and every layer of the single-platform ``manifest``."""
    for blob in dict.fromkeys(media.blobs(manifest.body)):
        await copy_blob(src, src_repo, dst, dst_repo, blob, chunk=chunk, report=report)


async def copy_release(
    src: Client,
    src_repo: str,
    dst: Client,
    dst_repo: str,
    digest: str,
    tag: str,
    *,
    chunk: int = CHUNK,
    child_tag: Callable[[str], str] | None = None,
) -> Report:
    """Copy release ``digest`` of ``src``/``src_repo`` to ``dst``/``dst_repo`` as ``tag``: every
    blob, every child manifest (PUT by digest, or as ``child_tag(digest)``), then the manifest
    itself as ``tag``; return what was done once ``dst``'s tag answers ``digest`` (else
    ProtocolError).

    ``child_tag``: tag the children too. Distribution's ``garbage-collect --delete-untagged``
    deletes untagged manifests even when a tagged index lists them (2.8 behaviour), and then
    their blobs: a vault must hold every child by a tag of its own.

    Only verified bytes travel: each manifest's sha256 is its digest, each blob's too.
    """
    report = Report()
    top = await src.get_manifest(src_repo, digest, expected_digest=digest)
    if media.is_index(top.media_type):
        for child_digest, _ in media.children(top.body):
            child = await src.get_manifest(src_repo, child_digest, expected_digest=child_digest)
            if media.is_index(child.media_type):
                raise errors.ProtocolError(
                    f"index {digest} nests index {child_digest}: not supported by the vault"
                )
            await copy_image_blobs(src, src_repo, dst, dst_repo, child, report, chunk=chunk)
            reference = child_tag(child.digest) if child_tag is not None else child.digest
            await dst.put_manifest(dst_repo, reference, child.body, child.media_type)
            report.manifests += 1
    else:
        await copy_image_blobs(src, src_repo, dst, dst_repo, top, report, chunk=chunk)
    await dst.put_manifest(dst_repo, tag, top.body, top.media_type)
    report.manifests += 1
    answered = (await resolve.resolve_digest(dst, dst_repo, tag)).digest
    if answered != digest:
        raise errors.ProtocolError(
            f"after the copy {dst.name}/{dst_repo}:{tag} answers {answered}, not {digest}",
            registry=dst.name,
        )
    return report


def _counted(report: Report | None, how: str) -> str:
    if report is not None:
        report.count(how)
    return how
