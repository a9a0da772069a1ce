"""Blob uploads into a repository and ranged reads out of one: what copying a release between
repositories needs (``registry.copy``, for the vault).

An ``Uploads`` drives one ``client.RegistryClient`` (its wire, its token handshake, its
translation of answers into ``errors``), with the push credentials when the registry has some.
"""

from __future__ import annotations

import httpx

from watchdog import models
from watchdog.registry import auth, client
from watchdog.registry import transport as wire


class Uploads:
    """The upload calls of one registry's client (push-scoped)."""

    def __init__(self, registry: client.RegistryClient) -> None:
        self._client = registry

    async def mount(self, repository: str, digest: str, source: str) -> httpx.URL | None:
        """Mount blob ``digest`` of ``source`` (a repository of this registry) into
        ``repository``: None when the registry mounted it (201, no bytes moved); else the URL of
        the upload session it opened instead (202), to stream the blob into.

        Asks for ``repository:<repository>:pull,push`` and ``repository:<source>:pull``, with
        the push credentials when they are configured.
        """
        if self._client._push_client is not None:
            return await Uploads(self._client._push_client).mount(repository, digest, source)
        models.check_repository(repository)
        models.check_repository(source)
        models.check_digest(digest)
        what = f"mount blob {digest} from {source} into {repository}"
        url = self._client._wire.base.join(f"/v2/{repository}/blobs/uploads/").copy_with(
            params={"mount": digest, "from": source}
        )
        resp = await self._client._request(
            "POST",
            url,
            what=what,
            repository=repository,
            actions=("pull", "push"),
            extra_scope=auth.scope_for(source, ("pull",)),
            content=b"",
            idempotent=True,  # a mount is; a 202 session left behind is purged by the registry
        )
        if resp.status == 201:
            return None
        if resp.status == 202:
            return self._location(what, resp)
        raise self._client._refusal(what, resp)

    async def start(self, repository: str) -> httpx.URL:
        """Open a blob upload session in ``repository``; return its URL (push-scoped)."""
        if self._client._push_client is not None:
            return await Uploads(self._client._push_client).start(repository)
        models.check_repository(repository)
        what = f"start blob upload to {repository}"
        resp = await self._client._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            what=what,
            repository=repository,
            actions=("pull", "push"),
            content=b"",
            idempotent=True,
        )
        if resp.status != 202:
            raise self._client._refusal(what, resp)
        return self._location(what, resp)

    async def chunk(
        self, repository: str, location: httpx.URL, data: bytes, offset: int
    ) -> httpx.URL:
        """PATCH ``data`` (the bytes at ``offset`` of the blob) into the upload session at
        ``location``; return the session's next URL. Not retried: a chunk half-taken leaves the
        session in an unknown state, and the caller starts the copy again."""
        if self._client._push_client is not None:
            return await Uploads(self._client._push_client).chunk(
                repository, location, data, offset
            )
        what = f"upload {len(data)} bytes at {offset} to {repository}"
        headers = {"Content-Type": "application/octet-stream"}
        if data:
            headers["Content-Range"] = f"{offset}-{offset + len(data) - 1}"
        resp = await self._client._request(
            "PATCH",
            location,
            what=what,
            repository=repository,
            actions=("pull", "push"),
            headers=headers,
            content=data,
            idempotent=False,
        )
        if resp.status != 202:
            raise self._client._refusal(what, resp)
        return self._location(what, resp)

    async def finish(self, repository: str, location: httpx.URL, digest: str) -> None:
        """Commit the upload session at ``location`` as blob ``digest`` (``PUT ?digest=``); the
        registry checks the bytes against the digest and refuses (``DIGEST_INVALID``) otherwise."""
        if self._client._push_client is not None:
            return await Uploads(self._client._push_client).finish(repository, location, digest)
        models.check_digest(digest)
        what = f"commit blob {digest} to {repository}"
        resp = await self._client._request(
            "PUT",
            location.copy_merge_params({"digest": digest}),
            what=what,
            repository=repository,
            actions=("pull", "push"),
            headers={"Content-Type": "application/octet-stream"},
            content=b"",
            idempotent=False,
        )
        if resp.status not in (201, 204):
            raise self._client._refusal(what, resp)

    async def read(
        self, repository: str, digest: str, start: int, size: int
    ) -> tuple[bytes, int | None]:
        """Up to ``size`` bytes of blob ``digest`` from ``start`` (a ranged GET), and the blob's
        whole length when the registry said (``Content-Range``); b"" past its end (416). A
        registry that ignores Range may answer the whole blob from ``start == 0`` when it fits
        ``size``; a larger one raises ProtocolError. A definitive 404 raises NotFound. The
        caller verifies the digest over the whole, and should not ask past the length: some
        registries answer that with a broken body instead of a 416."""
        models.check_repository(repository)
        models.check_digest(digest)
        what = f"GET blob {repository}@{digest} bytes {start}+{size}"
        resp = await self._client._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            what=what,
            repository=repository,
            headers={"Range": f"bytes={start}-{start + size - 1}", "Accept-Encoding": "identity"},
            max_body=size,
        )
        if resp.status == 206:
            return resp.body, _range_total(resp.headers.get("content-range"))
        if resp.status == 200 and start == 0:
            return resp.body, len(resp.body)
        if resp.status == 416 and start > 0:
            return b"", None
        if resp.status == 404:
            raise self._client._not_found(what, resp, allowed=client.BLOB_NOT_FOUND_CODES)
        raise self._client._wire.unexpected(what, resp)

    def _location(self, what: str, resp: wire.Response) -> httpx.URL:
        """The upload session's URL from ``Location``; only on this registry (the token the
        session is driven with must not travel elsewhere)."""
        location = resp.headers.get("location")
        if not location:
            raise self._client._wire.protocol(what, f"HTTP {resp.status} without a Location")
        try:
            target = resp.url.join(location)
        except httpx.InvalidURL:
            raise self._client._wire.protocol(
                what, f"unusable Location {location[:80]!r}"
            ) from None
        if (target.host, target.port) != (resp.url.host, resp.url.port) and target.path.startswith(
            "/v2/"
        ):
            # A registry behind a proxy or ingress that names its own inner address: the
            # session is the registry's, reached through the address we trust.
            target = resp.url.copy_with(path=target.path, query=target.query or None)
        return self._client._follow(what, resp.url, str(target))


def _range_total(value: str | None) -> int | None:
    """The complete length of ``Content-Range: bytes a-b/TOTAL`` (None when unknown: ``*``)."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None
