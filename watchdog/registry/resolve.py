"""What a reference points to: a HEAD, then a verified GET of the manifest when the HEAD is not
enough. One procedure for the check, ``guard`` and the end of a restore.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from watchdog import errors, models


class Manifests(Protocol):
    """What resolving needs of a registry (watchdog.registry.client.RegistryClient)."""

    async def head_manifest(self, repository: str, reference: str) -> models.ManifestHead: ...

    async def get_manifest(
        self, repository: str, reference: str, *, expected_digest: str | None = None
    ) -> models.Manifest: ...


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The answer: ``digest`` and ``media_type`` of what the reference points to; ``manifest`` is
    the verified GET when one was made (None when the HEAD was enough)."""

    digest: str
    media_type: str | None
    head: models.ManifestHead
    manifest: models.Manifest | None = None


async def resolve_digest(
    registry: Manifests,
    repository: str,
    reference: str,
    *,
    verify: bool = False,
    known: str | None = None,
) -> Resolved:
    """HEAD ``reference`` (a tag or digest) of ``repository``; GET and verify its manifest when
    the HEAD sent no digest, or when ``verify`` is set and the HEAD's digest is not ``known``.

    The HEAD's digest stands on its own only when ``verify`` is False or it equals ``known`` (a
    digest already trusted: HEAD does not count against Docker Hub's pull limit). A GET's digest
    is the sha256 of the bytes served, and must be the HEAD's digest when the HEAD sent one.

    Raises NotFound only when the HEAD's reference is definitively absent (the client confirms
    a 404 by GET). A manifest that vanishes between the HEAD and the GET, and a registry whose
    HEAD and GET disagree, raise ProtocolError: neither is evidence of absence or of a digest.
    Other registry failures raise as the client raises them.
    """
    head = await registry.head_manifest(repository, reference)
    if head.digest is not None and (not verify or head.digest == known):
        return Resolved(head.digest, head.media_type, head)
    try:
        manifest = await registry.get_manifest(repository, reference)
    except errors.NotFound as exc:
        # A race with a delete, or a registry out of step with itself: next time will tell.
        raise errors.ProtocolError(
            f"{exc}: the manifest vanished between HEAD and GET",
            registry=exc.registry,
            temporary=True,
        ) from exc
    if head.digest is not None and head.digest != manifest.digest:
        raise errors.ProtocolError(
            f"the registry contradicts itself: HEAD answered {head.digest}, "
            f"GET served {manifest.digest} for {repository}:{reference}"
        )
    return Resolved(manifest.digest, manifest.media_type, head, manifest)
