"""An async client for the OCI Distribution API: just what watching and restoring need.

The API calls and the checks of their answers live here; the wire (pools, deadline, limits,
httpx's exceptions) is :mod:`watchdog.registry.transport` and the 401 handshake is
:mod:`watchdog.registry.auth`. Every unwelcome HTTP status is translated once, into the tree of
:mod:`watchdog.errors`. The rule that matters most: an outage, a 401/403, a 429 or a 5xx is an
error, never an answer. Only a 404 carrying a registry error code (``MANIFEST_UNKNOWN``,
``NAME_UNKNOWN``) becomes :class:`errors.NotFound`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

from watchdog import config, errors, models, retry, safejson
from watchdog.registry import auth, media
from watchdog.registry import transport as wire

MAX_TAGS = 100_000
MAX_TAG_PAGES = 1_000
MAX_TAGS_BODY_BYTES = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # an image config blob (JSON); layers are never fetched
DEFAULT_PAGE_SIZE = 1000
IDEMPOTENT = frozenset({"GET", "HEAD"})
# The registry error codes that make a 404 a definitive "it does not exist". TAG_INVALID is not
# one: the spec uses it for a manifest PUT whose tag disagrees with the URL, not for absence.
NOT_FOUND_CODES = ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
BLOB_NOT_FOUND_CODES = ("BLOB_UNKNOWN", "NAME_UNKNOWN")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# In-line retries of one request: short, since a scheduler slot waits. A Retry-After longer than
# max_retry_after is not waited for: the error carries it to the caller, who reschedules.
DEFAULT_RETRY = retry.Policy(attempts=3, base=0.2, factor=2.0, cap=5.0, max_retry_after=5.0)

_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_REL_NEXT_RE = re.compile(r';\s*rel\s*=\s*"?([^";]*)"?', re.IGNORECASE)


def parse_link_next(values: list[str]) -> str | None:
    """The target of the ``rel="next"`` link among ``Link`` header values, or None."""
    for value in values:
        for match in _LINK_RE.finditer(value):
            for rel in _REL_NEXT_RE.finditer(match.group(2)):
                if "next" in rel.group(1).lower().split():
                    return match.group(1).strip()
    return None


Sleep = Callable[[float], Awaitable[None]]


class RegistryClient:
    """Talks to one registry host. Use as ``async with RegistryClient(settings) as client:``.

    Safe for many concurrent calls: at most ``settings.max_concurrency`` exchanges are in flight,
    spread round-robin over a few small connection pools. Credentials are looked up lazily (only
    when the registry asks for them) and bearer tokens are cached per scope until they expire.
    """

    def __init__(
        self,
        settings: config.RegistrySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        observer: wire.RequestObserver | None = None,
        retry: retry.Policy | None = None,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
        docker_config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Build the client; nothing is connected or looked up until the first request.

        ``transport`` replaces the network (one pool then); ``sleep`` replaces ``asyncio.sleep``
        in the retry loop; ``retry`` replaces DEFAULT_RETRY; ``clock`` drives the token cache;
        ``env`` replaces ``os.environ`` for credential lookup; ``docker_config_path`` names the
        docker ``config.json`` to read instead of ``$DOCKER_CONFIG/config.json`` or
        ``~/.docker/config.json``.
        """
        self.settings = settings
        self.name = settings.host
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._retry = retry if retry is not None else DEFAULT_RETRY
        self._wire = wire.Transport(settings, transport=transport, observer=observer)
        self._auth = auth.Handshake(
            settings, self._wire, clock=clock, env=env, docker_config_path=docker_config_path
        )
        # Pushes with their own credentials go through a client of their own: its token cache
        # and challenge must never hand a pull identity's token to a push or the reverse.
        self._push_client: RegistryClient | None = None
        if settings.push_username:
            self._push_client = RegistryClient(
                settings.model_copy(
                    update={
                        "username": settings.push_username,
                        "password": settings.push_password,
                        "push_username": None,
                        "push_password": None,
                        "use_docker_config": False,
                    }
                ),
                transport=transport,
                sleep=sleep,
                observer=observer,
                retry=retry,
                clock=clock,
                env=env,
            )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection pool. Idempotent; the client cannot be used afterwards."""
        if self._push_client is not None:
            await self._push_client.aclose()
        await self._wire.aclose()

    def __repr__(self) -> str:
        return f"RegistryClient({self.name!r})"

    # --- the API ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Return when ``/v2/`` answers 200 (authenticating if the registry asks); else raise."""
        what = "GET /v2/"
        resp = await self._request("GET", "/v2/", what=what, repository=None)
        if resp.status == 200:
            return
        if resp.status == 404:
            raise errors.ProtocolError(
                self._wire.message(what, "HTTP 404: this does not look like an OCI registry"),
                registry=self.name,
                status=404,
            )
        raise self._wire.unexpected(what, resp)

    async def list_tags(self, repository: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> list[str]:
        """Every tag of ``repository``, each once, in the order the registry first listed it.

        Follows ``Link: <...>; rel="next"`` pages on this registry only. Copes with registries
        that ignore ``n``/``last`` (repeated pages, Link loops end the listing rather than spin).
        Raises NotFound (``NAME_UNKNOWN``) for an unknown repository, ProtocolError past
        MAX_TAGS tags or for a malformed answer.
        """
        models.check_repository(repository)
        what = f"GET tags of {repository}"
        url: httpx.URL | None = self._wire.base.join(f"/v2/{repository}/tags/list").copy_with(
            params={"n": str(max(1, page_size))}
        )
        tags: list[str] = []
        seen: set[str] = set()
        visited: set[str] = set()
        pages = 0
        while url is not None:
            if str(url) in visited:
                break  # a Link loop: the registry ignores `last`; we have all it will give
            visited.add(str(url))
            pages += 1
            if pages > MAX_TAG_PAGES:
                raise errors.ProtocolError(
                    self._wire.message(what, f"more than {MAX_TAG_PAGES} pages of tags"),
                    registry=self.name,
                )
            resp = await self._request(
                "GET", url, what=what, repository=repository, max_body=MAX_TAGS_BODY_BYTES
            )
            if resp.status == 404:
                raise self._not_found(what, resp, allowed=("NAME_UNKNOWN",))
            if resp.status != 200:
                raise self._wire.unexpected(what, resp)
            new = 0
            for tag in self._page_tags(what, resp.body):
                if tag not in seen:
                    seen.add(tag)
                    tags.append(tag)
                    new += 1
            if len(tags) > MAX_TAGS:
                raise errors.ProtocolError(
                    self._wire.message(what, f"more than {MAX_TAGS} tags; refusing to go on"),
                    registry=self.name,
                )
            if new == 0 and pages > 1:
                break  # a repeated page: following its Link would only repeat it again
            link = parse_link_next(resp.headers.get_list("link"))
            url = self._follow(what, resp.url, link) if link else None
        return tags

    async def head_manifest(self, repository: str, reference: str) -> models.ManifestHead:
        """What ``reference`` (a tag or digest) points to, by HEAD with every manifest type accepted.

        For a multi-platform tag this is the index's digest, never a platform child's. A 404 is
        confirmed with a GET (a HEAD has no body to say why): only a registry error code
        (MANIFEST_UNKNOWN, NAME_UNKNOWN) raises NotFound; a bare 404 from something in front of
        the registry raises RegistryUnavailable. When the confirming GET finds the manifest
        after all, its verified digest is returned.
        """
        models.check_repository(repository)
        _check_reference(reference)
        what = f"HEAD manifest {_ref_text(repository, reference)}"
        resp = await self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            what=what,
            repository=repository,
            headers={"Accept": media.ACCEPT},
            max_body=0,
        )
        if resp.status == 404:
            # A HEAD has no body to say why; only the GET's registry error code is definitive.
            manifest = await self._get_manifest(
                repository, reference, None, what=f"{what}: 404, confirming by GET"
            )
            return models.ManifestHead(manifest.digest, manifest.media_type, len(manifest.body))
        if resp.status != 200:
            raise self._wire.unexpected(what, resp)
        digest = resp.headers.get("docker-content-digest")
        if digest is not None:
            digest = digest.strip()
            if not models.DIGEST_RE.match(digest):
                raise errors.ProtocolError(
                    self._wire.message(
                        what, f"Docker-Content-Digest is not a sha256 digest: {digest[:80]!r}"
                    ),
                    registry=self.name,
                )
            if models.DIGEST_RE.match(reference) and digest != reference:
                raise errors.ProtocolError(
                    self._wire.message(
                        what, f"asked for {reference} but the registry answered {digest}"
                    ),
                    registry=self.name,
                )
        length = resp.headers.get("content-length")
        size = int(length) if length is not None and length.strip().isdigit() else None
        return models.ManifestHead(digest, media.base_type(resp.headers.get("content-type")), size)

    async def get_manifest(
        self, repository: str, reference: str, *, expected_digest: str | None = None
    ) -> models.Manifest:
        """The manifest bytes for ``reference``, with their verified digest.

        The digest is the sha256 of the body, never the header's word: a ``Docker-Content-Digest``
        that disagrees, a body that does not hash to a digest reference or to ``expected_digest``,
        a body over MAX_MANIFEST_BYTES or one that is not a JSON object raise ProtocolError.
        """
        models.check_repository(repository)
        _check_reference(reference)
        if expected_digest is not None:
            models.check_digest(expected_digest)
        what = f"GET manifest {_ref_text(repository, reference)}"
        return await self._get_manifest(repository, reference, expected_digest, what=what)

    async def _get_manifest(
        self, repository: str, reference: str, expected_digest: str | None, *, what: str
    ) -> models.Manifest:
        resp = await self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            what=what,
            repository=repository,
            headers={"Accept": media.ACCEPT},
            max_body=media.MAX_MANIFEST_BYTES,
        )
        if resp.status == 404:
            raise self._not_found(what, resp, allowed=NOT_FOUND_CODES)
        if resp.status != 200:
            raise self._wire.unexpected(what, resp)
        return self._verified_manifest(what, reference, expected_digest, resp)

    async def manifest_exists(self, repository: str, digest: str) -> bool:
        """True when the registry holds manifest ``digest`` of ``repository``; False only on a
        definitive 404 (``MANIFEST_UNKNOWN``/``NAME_UNKNOWN``). Anything else raises."""
        models.check_digest(digest)
        try:
            await self.head_manifest(repository, digest)
        except errors.NotFound:
            return False
        return True

    async def head_blob(self, repository: str, digest: str) -> bool:
        """True when blob ``digest`` exists in ``repository``; False only on a definitive 404.

        A HEAD has no body to say why it is 404, so a 404 is confirmed with a one-byte ranged GET
        whose error code (``BLOB_UNKNOWN``, ``NAME_UNKNOWN``) is definitive; a bare 404 from
        something in front of the registry raises RegistryUnavailable, as for manifests.
        """
        models.check_repository(repository)
        models.check_digest(digest)
        what = f"HEAD blob {repository}@{digest}"
        path = f"/v2/{repository}/blobs/{digest}"
        # Not followed: registries on object storage redirect blob requests to a URL signed for
        # GET, where a HEAD is refused (403). A registry only redirects to a blob it has.
        resp = await self._request(
            "HEAD", path, what=what, repository=repository, max_body=0, follow_redirects=False
        )
        if resp.status == 200 or resp.status in REDIRECTS:
            return True
        if resp.status != 404:
            raise self._wire.unexpected(what, resp)
        what = f"{what}: 404, confirming by GET"
        resp = await self._request(
            "GET",
            path,
            what=what,
            repository=repository,
            headers={"Range": "bytes=0-0"},
            max_body=wire.MAX_ERROR_BODY_BYTES,
        )
        if resp.status in (200, 206):
            return True
        if resp.status == 404:
            error = self._not_found(what, resp, allowed=BLOB_NOT_FOUND_CODES)
            if isinstance(error, errors.NotFound):
                return False
            raise error
        raise self._wire.unexpected(what, resp)

    async def get_blob(
        self, repository: str, digest: str, *, max_bytes: int = MAX_CONFIG_BYTES
    ) -> bytes:
        """The bytes of the small blob ``digest`` (an image config), verified against the digest.

        A definitive 404 (``BLOB_UNKNOWN``/``NAME_UNKNOWN``) raises NotFound; a body over
        ``max_bytes`` or one that does not hash to ``digest`` raises ProtocolError.
        """
        models.check_repository(repository)
        models.check_digest(digest)
        what = f"GET blob {repository}@{digest}"
        resp = await self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            what=what,
            repository=repository,
            max_body=max_bytes,
        )
        if resp.status == 404:
            raise self._not_found(what, resp, allowed=BLOB_NOT_FOUND_CODES)
        if resp.status != 200:
            raise self._wire.unexpected(what, resp)
        if models.sha256_digest(resp.body) != digest:
            raise self._wire.protocol(what, f"the body hashes to {models.sha256_digest(resp.body)}")
        return resp.body

    async def put_manifest(
        self, repository: str, reference: str, body: bytes, media_type: str
    ) -> str:
        """PUT ``body`` (exactly these bytes) as ``reference`` (a tag or its digest) with
        Content-Type ``media_type``; return the digest the registry reports, which must be
        sha256(body) (else ProtocolError).

        Asks for a push-scoped token (``repository:NAME:pull,push``) and uses the registry's push
        credentials when they are configured, the pull ones otherwise. A PUT of the same bytes is
        idempotent, so it goes through the usual retry loop. A refusal (400 with registry codes
        such as ``MANIFEST_BLOB_UNKNOWN``) raises ProtocolError naming the codes.
        """
        if self._push_client is not None:
            return await self._push_client.put_manifest(repository, reference, body, media_type)
        models.check_repository(repository)
        _check_reference(reference)
        digest = models.sha256_digest(body)
        if models.DIGEST_RE.match(reference) and reference != digest:
            raise errors.InvalidReference(
                f"refusing to PUT bytes hashing to {digest} as {repository}@{reference}"
            )
        what = f"PUT manifest {_ref_text(repository, reference)}"
        resp = await self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            what=what,
            repository=repository,
            actions=("pull", "push"),
            headers={"Content-Type": media_type},
            content=body,
            idempotent=True,
        )
        if resp.status not in (200, 201):
            codes = _error_codes(resp.body)
            if codes:
                raise self._wire.protocol(
                    what, f"HTTP {resp.status} {', '.join(codes)}: {self._wire.body_text(resp)}"
                )
            raise self._wire.unexpected(what, resp)
        reported = (resp.headers.get("docker-content-digest") or "").strip() or digest
        if reported != digest:
            raise self._wire.protocol(
                what,
                f"the registry reports {errors.truncate(reported, 80)}, the bytes are {digest}",
            )
        return reported

    def _refusal(self, what: str, resp: wire.Response) -> errors.RegistryError:
        """A non-2xx answer to a push: its registry codes named (DENIED, DIGEST_INVALID...)."""
        if resp.status == 404:
            return self._not_found(what, resp, allowed=BLOB_NOT_FOUND_CODES)
        codes = _error_codes(resp.body)
        if codes:
            return self._wire.protocol(
                what, f"HTTP {resp.status} {', '.join(codes)}: {self._wire.body_text(resp)}"
            )
        return self._wire.unexpected(what, resp)

    # --- answers -----------------------------------------------------------------------------

    def _verified_manifest(
        self, what: str, reference: str, expected: str | None, resp: wire.Response
    ) -> models.Manifest:
        digest = models.sha256_digest(resp.body)
        content_type = resp.headers.get("content-type")
        if media.is_schema1(content_type):
            raise self._wire.protocol(
                what, f"schema 1 manifest ({media.base_type(content_type)}) is not supported"
            )
        header = resp.headers.get("docker-content-digest")
        if header is not None and header.strip() != digest:
            raise self._wire.protocol(
                what,
                f"Docker-Content-Digest says {errors.truncate(header, 80)} but the body hashes to {digest}",
            )
        for wanted in (reference if models.DIGEST_RE.match(reference) else None, expected):
            if wanted is not None and wanted != digest:
                raise self._wire.protocol(
                    what, f"expected {wanted} but the body hashes to {digest}"
                )
        try:
            media_type = media.media_type_of(resp.body, content_type)
        except errors.ProtocolError as exc:
            raise self._wire.protocol(what, str(exc)) from exc
        if media_type is None:
            raise self._wire.protocol(what, "neither a mediaType field nor a Content-Type")
        if media.is_schema1(media_type):
            raise self._wire.protocol(what, "schema 1 manifests are not supported")
        return models.Manifest(digest=digest, media_type=media_type, body=resp.body)

    def _page_tags(self, what: str, body: bytes) -> list[str]:
        try:
            doc = safejson.loads(body)
        except safejson.TooDeep as exc:
            raise self._wire.protocol(what, f"the tag list is refused: {exc}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._wire.protocol(what, "the tag list is not valid JSON") from None
        if not isinstance(doc, dict):
            raise self._wire.protocol(what, "the tag list is not a JSON object")
        raw = doc.get("tags")
        if raw is None:
            return []  # "tags": null is how distribution says "no tags"
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise self._wire.protocol(what, "'tags' is not a list of strings")
        return raw

    def _follow(self, what: str, current: httpx.URL, link: str) -> httpx.URL:
        """The next page's URL; only on this registry (a token must not travel elsewhere)."""
        try:
            target = current.join(link)
        except httpx.InvalidURL:
            raise self._wire.protocol(
                what, f"unusable Link header {errors.truncate(link, 80)!r}"
            ) from None
        if (target.scheme, target.host, target.port) != (
            current.scheme,
            current.host,
            current.port,
        ):
            raise self._wire.protocol(what, f"Link points off this registry: {target.host}")
        return target

    def _not_found(
        self, what: str, resp: wire.Response, *, allowed: tuple[str, ...]
    ) -> errors.RegistryError:
        """NotFound for a 404 with one of ``allowed`` registry codes; otherwise not a definitive answer."""
        codes = _error_codes(resp.body)
        for code in allowed:
            if code in codes:
                return errors.NotFound(
                    self._wire.message(what, f"HTTP 404 {code}"), registry=self.name, code=code
                )
        if codes:
            return errors.ProtocolError(
                self._wire.message(
                    what, f"HTTP 404 with unexpected error code(s) {', '.join(codes)}"
                ),
                registry=self.name,
                status=404,
            )
        # A 404 without a registry error body came from a router, a proxy or a misconfigured
        # ingress, not from the registry's own knowledge: never evidence that something is gone.
        return errors.RegistryUnavailable(
            self._wire.message(
                what, f"HTTP 404 without a registry error code: {self._wire.body_text(resp)}"
            ),
            registry=self.name,
            status=404,
        )

    # --- the request path ----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        target: str | httpx.URL,
        *,
        what: str,
        repository: str | None,
        actions: tuple[str, ...] = ("pull",),
        extra_scope: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        max_body: int = wire.MAX_ERROR_BODY_BYTES,
        idempotent: bool | None = None,
        follow_redirects: bool = True,
    ) -> wire.Response:
        """One logical request: auth, then the one retry loop around temporary failures.

        Returns the response for any status the caller must interpret (2xx, 404, other 4xx);
        raises AuthError for 401/403 once authentication was tried, RateLimited for 429 and
        RegistryUnavailable for 5xx and transport failures after the retries are spent.
        """
        url = target if isinstance(target, httpx.URL) else self._wire.base.join(target)
        scope = auth.scope_for(repository, actions) if repository else ""
        if extra_scope:  # e.g. pull on the source of a cross-repository mount
            scope = auth.join_scopes(scope, extra_scope)
        retryable = method in IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        while True:
            attempt += 1
            error: errors.RegistryError
            try:
                resp = await self._auth.send(
                    method,
                    url,
                    what=what,
                    scope=scope,
                    headers=headers or {},
                    content=content,
                    max_body=max_body,
                    follow_redirects=follow_redirects,
                )
            except (errors.RegistryUnavailable, errors.RateLimited) as exc:
                # transport failures, and 429/5xx from the token service
                error = exc
                retry_after = exc.retry_after if isinstance(exc, errors.RateLimited) else None
            else:
                temporary = self._wire.temporary_error(what, resp)
                if temporary is None:
                    return resp
                error = temporary
                retry_after = retry.parse_retry_after(resp.headers.get("retry-after"))
            if not retryable or self._retry.exhausted(attempt):
                raise error
            if not self._retry.honours(retry_after):
                raise error  # longer than we wait in-line: the caller reschedules
            await self._sleep(self._retry.delay(attempt, retry_after))


def _error_codes(body: bytes) -> list[str]:
    """``errors[].code`` of a registry error body; [] when it is not one."""
    try:
        doc: Any = safejson.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    return [
        e["code"] for e in doc["errors"] if isinstance(e, dict) and isinstance(e.get("code"), str)
    ]


def _check_reference(reference: str) -> None:
    if not (models.DIGEST_RE.match(reference) or models.TAG_RE.match(reference)):
        raise errors.InvalidReference(
            f"not a valid tag or digest: {errors.truncate(reference, 80)!r}"
        )


def _ref_text(repository: str, reference: str) -> str:
    return (
        f"{repository}@{reference}"
        if reference.startswith("sha256:")
        else f"{repository}:{reference}"
    )
