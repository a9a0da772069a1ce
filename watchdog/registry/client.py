"""An async client for the OCI Distribution API: just what watching (and later restoring) needs.

Every httpx exception and every unwelcome HTTP status is translated here, once, into the tree of
:mod:`watchdog.errors`. The rule that matters most: an outage, a 401/403, a 429 or a 5xx is an
error, never an answer. Only a 404 carrying a registry error code (``MANIFEST_UNKNOWN``,
``NAME_UNKNOWN``) becomes :class:`errors.NotFound`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import itertools
import json
import math
import os
import pathlib
import re
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol

import httpx

from watchdog import config, errors, models
from watchdog.registry import auth, media

MAX_TAGS = 100_000
MAX_TAG_PAGES = 1_000
MAX_TAGS_BODY_BYTES = 16 * 1024 * 1024
MAX_TOKEN_BODY_BYTES = 1024 * 1024
# Error bodies are only read for the message (and for the error code of a 404).
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # an image config blob (JSON); layers are never fetched
# httpcore refuses a response whose header block exceeds this (its h11 receive buffer limit),
# saying only "Receive buffer too long": that is a registry answering nonsense, not an outage.
MAX_HEADER_BYTES = 100 * 1024
_HEADERS_TOO_LARGE = "Receive buffer too long"
DEFAULT_PAGE_SIZE = 1000
# Several small pools rather than one big one: one 32-connection pool was measured spending
# ~2 ms CPU per request in pool bookkeeping; 4-connection pools were 2-3x cheaper.
CONNECTIONS_PER_CLIENT = 4
MAX_CLIENTS = 64
# A wall-clock limit on one exchange, on top of httpx's per-operation timeouts: a registry that
# dribbles a byte per second would otherwise never trip the read timeout.
DEADLINE_FACTOR = 3.0
IDEMPOTENT = frozenset({"GET", "HEAD"})
# The registry error codes that make a 404 a definitive "it does not exist". TAG_INVALID is not
# one: the spec uses it for a manifest PUT whose tag disagrees with the URL, not for absence.
NOT_FOUND_CODES = ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
BLOB_NOT_FOUND_CODES = ("BLOB_UNKNOWN", "NAME_UNKNOWN")
REDIRECTS = frozenset({301, 302, 303, 307, 308})

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_LINK_RE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_REL_NEXT_RE = re.compile(r';\s*rel\s*=\s*"?([^";]*)"?', re.IGNORECASE)
# Belt and braces for messages: anything shaped like a credential is blanked even if it was
# never registered as a secret (a JWT, an Authorization header value).
_SECRET_SHAPES = re.compile(
    r"(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)|((?:Bearer|Basic)\s+)[A-Za-z0-9+/=._~-]{16,}"
)


class RequestObserver(Protocol):
    """What the client reports about its traffic (metrics implement this; registry imports none)."""

    def on_request(self, registry: str, method: str, code: str, seconds: float) -> None:
        """One HTTP exchange ended: ``code`` is the status ("200") or an error label ("timeout")."""

    def on_ratelimit(self, registry: str, remaining: float) -> None:
        """The registry said how many requests are left (``RateLimit-Remaining``)."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Backoff as data: ``attempts`` tries in all; waits ``base * factor**n``, at most ``cap``.

    A ``Retry-After`` within ``cap`` is honoured instead of the backoff; a longer one is not
    waited for here: the error carries it to the caller (the scheduler has better things to do
    than hold a slot for minutes).
    """

    attempts: int = 3
    base: float = 0.2
    factor: float = 2.0
    cap: float = 5.0

    def backoff(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1 = the first retry)."""
        return min(self.cap, self.base * self.factor ** max(0, retry - 1))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None.

    A date in the past means 0; garbage means None (the caller falls back to its backoff).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def parse_ratelimit_remaining(value: str | None) -> float | None:
    """``100;w=21600`` (Docker Hub) or ``100`` -> 100.0; anything else -> None."""
    if not value:
        return None
    head = value.split(";", 1)[0].split(",", 1)[0].strip()
    try:
        number = float(head)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_link_next(values: list[str]) -> str | None:
    """The target of the ``rel="next"`` link among ``Link`` header values, or None."""
    for value in values:
        for match in _LINK_RE.finditer(value):
            for rel in _REL_NEXT_RE.finditer(match.group(2)):
                if "next" in rel.group(1).lower().split():
                    return match.group(1).strip()
    return None


@dataclasses.dataclass(frozen=True)
class _Response:
    """One exchange, fully read (within the size limit of what was asked)."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL


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
        observer: RequestObserver | None = None,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
        docker_config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Build the client; nothing is connected or looked up until the first request.

        ``transport`` replaces the network (one pool then); ``sleep`` replaces ``asyncio.sleep``
        in the retry loop; ``clock`` drives the token cache; ``env`` replaces ``os.environ`` for
        credential lookup; ``docker_config_path`` names the docker ``config.json`` to read
        instead of ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
        """
        self.settings = settings
        self.name = settings.host
        self._base = httpx.URL(f"{settings.scheme}://{models.api_host(settings.host)}")
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._observer = observer
        self._retry = retry if retry is not None else RetryPolicy()
        self._env = env
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._deadline = max(1.0, settings.timeout * DEADLINE_FACTOR)
        self._transport = transport
        # Created on first use, inside the running loop: httpx/anyio objects made outside it
        # (a CLI building clients before asyncio.run) would belong to no loop or the wrong one.
        self._clients: list[httpx.AsyncClient] = []
        self._next_client: Iterator[httpx.AsyncClient] = iter(())
        self._closed = False
        self._docker_config_path = (
            pathlib.Path(docker_config_path) if docker_config_path is not None else None
        )
        self._tokens = auth.TokenCache(clock)
        self._token_locks: dict[auth.TokenKey, asyncio.Lock] = {}
        # The challenge the registry last made: answered up front from then on, which saves a
        # round trip per request on registries that want auth.
        self._challenge: auth.Challenge | None = None
        self._credentials: auth.Credentials | None = None
        self._credentials_loaded = False
        self._credentials_lock = asyncio.Lock()
        self._secrets: set[str] = set()
        if settings.password:
            self._secrets.add(settings.password.reveal())
        if settings.push_password:
            self._secrets.add(settings.push_password.reveal())
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
        self._closed = True
        if self._push_client is not None:
            await self._push_client.aclose()
        clients, self._clients = self._clients, []
        self._next_client = iter(())
        for client in clients:
            await client.aclose()

    def _pool(self) -> httpx.AsyncClient:
        """The next connection pool, round-robin; the pools are made on the first call."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not self._clients:
            self._clients = self._make_pools()
            self._next_client = itertools.cycle(self._clients)
        return next(self._next_client)

    def _make_pools(self) -> list[httpx.AsyncClient]:
        timeout = httpx.Timeout(self.settings.timeout)
        if self._transport is not None:
            return [
                httpx.AsyncClient(transport=self._transport, timeout=timeout, follow_redirects=True)
            ]
        concurrency = self.settings.max_concurrency
        count = min(MAX_CLIENTS, max(1, math.ceil(concurrency / CONNECTIONS_PER_CLIENT)))
        per_client = max(1, math.ceil(concurrency / count))
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        return [
            # verify=True always: insecure means plain HTTP, never "HTTPS without checking"
            httpx.AsyncClient(timeout=timeout, limits=limits, verify=True, follow_redirects=True)
            for _ in range(count)
        ]

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
                self._message(what, "HTTP 404: this does not look like an OCI registry"),
                registry=self.name,
                status=404,
            )
        raise self._unexpected(what, resp)

    async def list_tags(self, repository: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> list[str]:
        """Every tag of ``repository``, each once, in the order the registry first listed it.

        Follows ``Link: <...>; rel="next"`` pages on this registry only. Copes with registries
        that ignore ``n``/``last`` (repeated pages, Link loops end the listing rather than spin).
        Raises NotFound (``NAME_UNKNOWN``) for an unknown repository, ProtocolError past
        MAX_TAGS tags or for a malformed answer.
        """
        _check_repository(repository)
        what = f"GET tags of {repository}"
        url: httpx.URL | None = self._base.join(f"/v2/{repository}/tags/list").copy_with(
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
                    self._message(what, f"more than {MAX_TAG_PAGES} pages of tags"),
                    registry=self.name,
                )
            resp = await self._request(
                "GET", url, what=what, repository=repository, max_body=MAX_TAGS_BODY_BYTES
            )
            if resp.status == 404:
                raise self._not_found(what, resp, allowed=("NAME_UNKNOWN",))
            if resp.status != 200:
                raise self._unexpected(what, resp)
            new = 0
            for tag in self._page_tags(what, resp.body):
                if tag not in seen:
                    seen.add(tag)
                    tags.append(tag)
                    new += 1
            if len(tags) > MAX_TAGS:
                raise errors.ProtocolError(
                    self._message(what, f"more than {MAX_TAGS} tags; refusing to go on"),
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
        _check_repository(repository)
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
            raise self._unexpected(what, resp)
        digest = resp.headers.get("docker-content-digest")
        if digest is not None:
            digest = digest.strip()
            if not models.DIGEST_RE.match(digest):
                raise errors.ProtocolError(
                    self._message(
                        what, f"Docker-Content-Digest is not a sha256 digest: {digest[:80]!r}"
                    ),
                    registry=self.name,
                )
            if models.DIGEST_RE.match(reference) and digest != reference:
                raise errors.ProtocolError(
                    self._message(
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
        _check_repository(repository)
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
            raise self._unexpected(what, resp)
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
        _check_repository(repository)
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
            raise self._unexpected(what, resp)
        what = f"{what}: 404, confirming by GET"
        resp = await self._request(
            "GET",
            path,
            what=what,
            repository=repository,
            headers={"Range": "bytes=0-0"},
            max_body=MAX_ERROR_BODY_BYTES,
        )
        if resp.status in (200, 206):
            return True
        if resp.status == 404:
            error = self._not_found(what, resp, allowed=BLOB_NOT_FOUND_CODES)
            if isinstance(error, errors.NotFound):
                return False
            raise error
        raise self._unexpected(what, resp)

    async def get_blob(
        self, repository: str, digest: str, *, max_bytes: int = MAX_CONFIG_BYTES
    ) -> bytes:
        """The bytes of the small blob ``digest`` (an image config), verified against the digest.

        A definitive 404 (``BLOB_UNKNOWN``/``NAME_UNKNOWN``) raises NotFound; a body over
        ``max_bytes`` or one that does not hash to ``digest`` raises ProtocolError.
        """
        _check_repository(repository)
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
            raise self._unexpected(what, resp)
        if models.sha256_digest(resp.body) != digest:
            raise self._protocol(what, f"the body hashes to {models.sha256_digest(resp.body)}")
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
        _check_repository(repository)
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
                raise self._protocol(
                    what, f"HTTP {resp.status} {', '.join(codes)}: {self._body_text(resp)}"
                )
            raise self._unexpected(what, resp)
        reported = (resp.headers.get("docker-content-digest") or "").strip() or digest
        if reported != digest:
            raise self._protocol(
                what,
                f"the registry reports {errors.truncate(reported, 80)}, the bytes are {digest}",
            )
        return reported

    # --- answers -----------------------------------------------------------------------------

    def _verified_manifest(
        self, what: str, reference: str, expected: str | None, resp: _Response
    ) -> models.Manifest:
        digest = models.sha256_digest(resp.body)
        content_type = resp.headers.get("content-type")
        if media.is_schema1(content_type):
            raise self._protocol(
                what, f"schema 1 manifest ({media.base_type(content_type)}) is not supported"
            )
        header = resp.headers.get("docker-content-digest")
        if header is not None and header.strip() != digest:
            raise self._protocol(
                what,
                f"Docker-Content-Digest says {errors.truncate(header, 80)} but the body hashes to {digest}",
            )
        for wanted in (reference if models.DIGEST_RE.match(reference) else None, expected):
            if wanted is not None and wanted != digest:
                raise self._protocol(what, f"expected {wanted} but the body hashes to {digest}")
        try:
            media_type = media.media_type_of(resp.body, content_type)
        except errors.ProtocolError as exc:
            raise self._protocol(what, str(exc)) from exc
        if media_type is None:
            raise self._protocol(what, "neither a mediaType field nor a Content-Type")
        if media.is_schema1(media_type):
            raise self._protocol(what, "schema 1 manifests are not supported")
        return models.Manifest(digest=digest, media_type=media_type, body=resp.body)

    def _page_tags(self, what: str, body: bytes) -> list[str]:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._protocol(what, "the tag list is not valid JSON") from None
        if not isinstance(doc, dict):
            raise self._protocol(what, "the tag list is not a JSON object")
        raw = doc.get("tags")
        if raw is None:
            return []  # "tags": null is how distribution says "no tags"
        if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
            raise self._protocol(what, "'tags' is not a list of strings")
        return raw

    def _follow(self, what: str, current: httpx.URL, link: str) -> httpx.URL:
        """The next page's URL; only on this registry (a token must not travel elsewhere)."""
        try:
            target = current.join(link)
        except httpx.InvalidURL:
            raise self._protocol(
                what, f"unusable Link header {errors.truncate(link, 80)!r}"
            ) from None
        if (target.scheme, target.host, target.port) != (
            current.scheme,
            current.host,
            current.port,
        ):
            raise self._protocol(what, f"Link points off this registry: {target.host}")
        return target

    def _not_found(
        self, what: str, resp: _Response, *, allowed: tuple[str, ...]
    ) -> errors.RegistryError:
        """NotFound for a 404 with one of ``allowed`` registry codes; otherwise not a definitive answer."""
        codes = _error_codes(resp.body)
        for code in allowed:
            if code in codes:
                return errors.NotFound(
                    self._message(what, f"HTTP 404 {code}"), registry=self.name, code=code
                )
        if codes:
            return errors.ProtocolError(
                self._message(what, f"HTTP 404 with unexpected error code(s) {', '.join(codes)}"),
                registry=self.name,
                status=404,
            )
        # A 404 without a registry error body came from a router, a proxy or a misconfigured
        # ingress, not from the registry's own knowledge: never evidence that something is gone.
        return errors.RegistryUnavailable(
            self._message(what, f"HTTP 404 without a registry error code: {self._body_text(resp)}"),
            registry=self.name,
            status=404,
        )

    def _unexpected(self, what: str, resp: _Response) -> errors.RegistryError:
        return errors.ProtocolError(
            self._message(what, f"unexpected HTTP {resp.status}: {self._body_text(resp)}"),
            registry=self.name,
            status=resp.status,
        )

    def _protocol(self, what: str, detail: str) -> errors.ProtocolError:
        return errors.ProtocolError(self._message(what, detail), registry=self.name)

    # --- the request path ----------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        target: str | httpx.URL,
        *,
        what: str,
        repository: str | None,
        actions: tuple[str, ...] = ("pull",),
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        max_body: int = MAX_ERROR_BODY_BYTES,
        idempotent: bool | None = None,
        follow_redirects: bool = True,
    ) -> _Response:
        """One logical request: auth, then the one retry loop around temporary failures.

        Returns the response for any status the caller must interpret (2xx, 404, other 4xx);
        raises AuthError for 401/403 once authentication was tried, RateLimited for 429 and
        RegistryUnavailable for 5xx and transport failures after the retries are spent.
        """
        url = target if isinstance(target, httpx.URL) else self._base.join(target)
        scope = auth.scope_for(repository, actions) if repository else ""
        retryable = method in IDEMPOTENT if idempotent is None else idempotent
        attempt = 0
        while True:
            attempt += 1
            error: errors.RegistryError
            try:
                resp = await self._attempt(
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
                temporary = self._temporary_error(what, resp)
                if temporary is None:
                    return resp
                error = temporary
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if not retryable or attempt >= self._retry.attempts:
                raise error
            if retry_after is not None and retry_after > self._retry.cap:
                raise error  # longer than we wait in-line: the caller reschedules
            await self._sleep(
                retry_after if retry_after is not None else self._retry.backoff(attempt)
            )

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        *,
        what: str,
        scope: str,
        headers: Mapping[str, str],
        content: bytes | None,
        max_body: int,
        follow_redirects: bool = True,
    ) -> _Response:
        sent: str | None = None
        if self._challenge is not None:
            sent = await self._authorization(self._challenge, scope, what)
        resp = await self._send(
            method,
            url,
            headers=_with_auth(headers, sent),
            content=content,
            max_body=max_body,
            what=what,
            follow_redirects=follow_redirects,
        )
        if resp.status == 401:
            challenge = auth.pick_challenge(
                auth.parse_challenges(resp.headers.get_list("www-authenticate"))
            )
            if challenge is None:
                raise errors.AuthError(
                    self._message(what, "HTTP 401 without a Bearer or Basic challenge"),
                    registry=self.name,
                    status=401,
                )
            # Retry once: when we sent nothing, or a token the registry no longer takes (revoked,
            # expired early, too narrow a scope), or the registry changed its mind about how.
            self._challenge = challenge
            stale = sent.split(" ", 1)[1] if sent and sent.startswith("Bearer ") else None
            fresh = await self._authorization(
                challenge, auth.join_scopes(scope, challenge.scope), what, stale=stale
            )
            if fresh is None:
                creds = await self._get_credentials()
                raise errors.AuthError(
                    self._message(
                        what,
                        f"the registry wants {challenge.scheme.capitalize()} credentials and "
                        f"{'none are configured' if creds is None else 'those found have no password'}",
                    ),
                    registry=self.name,
                    status=401,
                )
            if fresh != sent:
                resp = await self._send(
                    method,
                    url,
                    headers=_with_auth(headers, fresh),
                    content=content,
                    max_body=max_body,
                    what=what,
                    follow_redirects=follow_redirects,
                )
        if resp.status in (401, 403):
            creds = await self._get_credentials() if self._challenge is not None else None
            who = creds.identity if creds is not None else "<anonymous>"
            hint = ""
            if resp.status == 401:
                ch = auth.pick_challenge(
                    auth.parse_challenges(resp.headers.get_list("www-authenticate"))
                )
                if ch is not None and ch.error:
                    hint = f" ({ch.error})"
            raise errors.AuthError(
                self._message(what, f"HTTP {resp.status}{hint} as {who}: {self._body_text(resp)}"),
                registry=self.name,
                status=resp.status,
            )
        return resp

    def _temporary_error(self, what: str, resp: _Response) -> errors.RegistryError | None:
        """RateLimited for a 429, RegistryUnavailable for a 5xx, else None."""
        if resp.status == 429:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            after = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return errors.RateLimited(
                self._message(what, f"HTTP 429 rate limited{after}"),
                registry=self.name,
                retry_after=retry_after,
            )
        if resp.status >= 500:
            return errors.RegistryUnavailable(
                self._message(what, f"HTTP {resp.status}: {self._body_text(resp)}"),
                registry=self.name,
                status=resp.status,
            )
        return None

    # --- authentication ----------------------------------------------------------------------

    async def _get_credentials(self) -> auth.Credentials | None:
        """Credentials for this host, looked up once (may run a credential helper: in a thread)."""
        async with self._credentials_lock:
            if not self._credentials_loaded:
                creds = await asyncio.to_thread(
                    auth.resolve_credentials,
                    self.settings,
                    self._env,
                    config_path=self._docker_config_path,
                )
                if creds is not None:
                    self._secrets.update(creds.secrets())
                self._credentials = creds
                self._credentials_loaded = True
        return self._credentials

    async def _authorization(
        self, challenge: auth.Challenge, scope: str, what: str, *, stale: str | None = None
    ) -> str | None:
        """The Authorization header answering ``challenge`` for ``scope``, or None for "no way".

        ``stale`` is a token the registry just refused: a cached copy of it is not reused.
        """
        creds = await self._get_credentials()
        if challenge.scheme == "basic":
            return creds.basic_header() if creds is not None else None
        realm = challenge.realm or ""
        key = auth.TokenKey(realm, challenge.service or "", scope, creds.identity if creds else "")
        cached = self._tokens.get(key)
        if cached is not None and cached != stale:
            return f"Bearer {cached}"
        # One fetch per key at a time: fifty HEADs starting together make one token request.
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached != stale:
                return f"Bearer {cached}"
            token, expires_in = await self._fetch_token(challenge, scope, creds, what)
            self._tokens.put(key, token, expires_in)
            return f"Bearer {token}"

    async def _fetch_token(
        self, challenge: auth.Challenge, scope: str, creds: auth.Credentials | None, what: str
    ) -> tuple[str, float | None]:
        realm = challenge.realm or ""
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise errors.ProtocolError(
                self._message(what, "the Bearer challenge has an unusable realm"),
                registry=self.name,
            ) from None
        if realm_url.scheme not in ("http", "https"):
            raise errors.ProtocolError(
                self._message(what, f"the Bearer realm is not an http(s) URL ({realm_url.scheme})"),
                registry=self.name,
            )
        shown = f"token from {realm_url.host}{realm_url.path}"
        if creds is not None and realm_url.scheme == "http" and not self.settings.insecure:
            raise errors.AuthError(
                self._message(
                    what, f"refusing to send credentials to a plain-HTTP realm ({shown})"
                ),
                registry=self.name,
            )
        headers: dict[str, str] = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            # OAuth2 refresh-token grant, as docker does with an identity token.
            form = [("grant_type", "refresh_token"), ("client_id", "tag-watchdog")]
            form.extend(auth.token_query(challenge, scope))
            form.append(("refresh_token", creds.identity_token.reveal()))
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            method, url, content = "POST", realm_url, urllib.parse.urlencode(form).encode()
        else:
            basic = creds.basic_header() if creds is not None else None
            if basic:
                headers["Authorization"] = basic
            method, url, content = (
                "GET",
                realm_url.copy_merge_params(tuple(auth.token_query(challenge, scope))),
                None,
            )
        ask = f"{what}: {method} {shown}"
        resp = await self._send(
            method, url, headers=headers, content=content, max_body=MAX_TOKEN_BODY_BYTES, what=ask
        )
        if resp.status == 200:
            try:
                token, expires_in = auth.parse_token_response(resp.body)
            except errors.ProtocolError as exc:
                raise errors.ProtocolError(
                    self._message(ask, str(exc)), registry=self.name
                ) from exc
            self._secrets.add(token)
            return token, expires_in
        temporary = self._temporary_error(ask, resp)
        if temporary is not None:
            raise temporary
        who = creds.identity if creds is not None else "<anonymous>"
        raise errors.AuthError(
            self._message(
                ask,
                f"HTTP {resp.status} for {who}, scope {scope or '(none)'}: {self._body_text(resp)}",
            ),
            registry=self.name,
            status=resp.status,
        )

    # --- the wire ----------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        max_body: int,
        what: str,
        follow_redirects: bool = True,
    ) -> _Response:
        """One HTTP exchange, read within limits; transport failures become RegistryUnavailable."""
        client = self._pool()
        code = "error"
        async with self._semaphore:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._deadline):
                    request = client.build_request(method, url, headers=headers, content=content)
                    response = await client.send(
                        request, stream=True, follow_redirects=follow_redirects
                    )
                    code = str(response.status_code)
                    try:
                        body = await self._read(what, method, response, max_body)
                    finally:
                        await response.aclose()
            except errors.RegistryError:
                raise
            except httpx.TimeoutException as exc:
                code = "timeout"
                raise self._unavailable(what, "timed out", exc) from exc
            except TimeoutError as exc:
                # our own deadline: the registry kept answering, too slowly to ever finish
                code = "timeout"
                raise errors.RegistryUnavailable(
                    self._message(what, f"timed out: no complete answer in {self._deadline:g}s"),
                    registry=self.name,
                ) from exc
            except httpx.ConnectError as exc:
                code = "tls_error" if _is_tls(exc) else "connect_error"
                detail = "TLS handshake failed" if code == "tls_error" else "cannot connect"
                raise self._unavailable(what, detail, exc) from exc
            except httpx.RemoteProtocolError as exc:
                if _HEADERS_TOO_LARGE in str(exc):
                    code = "headers_too_large"
                    raise self._protocol(
                        what, f"the response headers are over the {MAX_HEADER_BYTES}-byte limit"
                    ) from exc
                code = "protocol_error"
                raise self._unavailable(what, "connection broken", exc) from exc
            except httpx.NetworkError as exc:
                code = "network_error"
                raise self._unavailable(what, "network error", exc) from exc
            except httpx.TooManyRedirects as exc:
                code = "redirect_loop"
                raise self._protocol(what, "too many redirects") from exc
            except httpx.DecodingError as exc:
                code = "decoding_error"
                raise self._protocol(what, "the body could not be decoded") from exc
            except httpx.HTTPError as exc:
                code = "http_error"
                raise self._protocol(what, f"{type(exc).__name__}") from exc
            finally:
                if self._observer is not None:
                    self._observer.on_request(
                        self.name, method, code, time.perf_counter() - started
                    )
        remaining = parse_ratelimit_remaining(response.headers.get("ratelimit-remaining"))
        if remaining is not None and self._observer is not None:
            self._observer.on_ratelimit(self.name, remaining)
        return _Response(response.status_code, response.headers, body, response.url)

    async def _read(self, what: str, method: str, response: httpx.Response, max_body: int) -> bytes:
        """The body, refusing (2xx) or cutting (errors) one larger than allowed, while streaming."""
        if method == "HEAD":
            # Drain the (empty) response so the connection goes back to the pool: closing an
            # unread stream makes httpcore drop the connection, one TCP handshake per HEAD.
            await response.aread()
            return b""
        success = 200 <= response.status_code < 300
        limit = max_body if success else MAX_ERROR_BODY_BYTES
        declared = response.headers.get("content-length")
        if (
            success
            and declared is not None
            and declared.strip().isdigit()
            and int(declared) > limit
        ):
            raise self._protocol(
                what, f"body of {int(declared)} bytes is over the {limit}-byte limit"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                if success:
                    raise self._protocol(what, f"body is over the {limit}-byte limit")
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _unavailable(
        self, what: str, detail: str, exc: BaseException
    ) -> errors.RegistryUnavailable:
        reason = str(exc) or type(exc).__name__
        return errors.RegistryUnavailable(
            self._message(what, f"{detail}: {reason}"), registry=self.name
        )

    # --- messages ----------------------------------------------------------------------------

    def _message(self, what: str, detail: str) -> str:
        """``registry <host>: <what>: <detail>`` on one line, secrets blanked."""
        return self._redact(errors.truncate(f"registry {self.name}: {what}: {detail}", 400))

    def _body_text(self, resp: _Response) -> str:
        if not resp.body:
            return "(no body)"
        return errors.truncate(self._redact(resp.body.decode("utf-8", "replace")))

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return _SECRET_SHAPES.sub(lambda m: (m.group(2) or "") + "***", text)


def _with_auth(headers: Mapping[str, str], authorization: str | None) -> dict[str, str]:
    out = dict(headers)
    if authorization:
        out["Authorization"] = authorization
    return out


def _error_codes(body: bytes) -> list[str]:
    """``errors[].code`` of a registry error body; [] when it is not one."""
    try:
        doc: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    return [
        e["code"] for e in doc["errors"] if isinstance(e, dict) and isinstance(e.get("code"), str)
    ]


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()


def _check_repository(repository: str) -> None:
    if len(repository) > models.MAX_NAME_LENGTH or not _REPOSITORY_RE.match(repository):
        raise errors.InvalidReference(
            f"not a valid repository name: {errors.truncate(repository, 80)!r}"
        )


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
