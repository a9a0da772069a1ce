"""The wire to one registry: connection pools, one exchange within a deadline and body limits,
httpx's exceptions translated into :mod:`watchdog.errors`, and messages with secrets blanked.

Nothing here knows the Distribution API or authentication: :mod:`watchdog.registry.auth` answers
challenges over this wire and :mod:`watchdog.registry.client` makes the API calls.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import math
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import httpx

import watchdog
from watchdog import config, errors, models, retry
from watchdog.config import tls

# Every request says who sends it, so that registry operators find the watchdog in their logs.
USER_AGENT = f"tag-watchdog/{watchdog.__version__}"

# Error bodies are only read for the message (and for the error code of a 404).
MAX_ERROR_BODY_BYTES = 64 * 1024
# httpcore refuses a response whose header block exceeds this (its h11 receive buffer limit),
# saying only "Receive buffer too long": that is a registry answering nonsense, not an outage.
MAX_HEADER_BYTES = 100 * 1024
_HEADERS_TOO_LARGE = "Receive buffer too long"
# Several small pools rather than one big one: one 32-connection pool was measured spending
# ~2 ms CPU per request in pool bookkeeping; 4-connection pools were 2-3x cheaper.
CONNECTIONS_PER_CLIENT = 4
MAX_CLIENTS = 64
# A wall-clock limit on one exchange, on top of httpx's per-operation timeouts: a registry that
# dribbles a byte per second would otherwise never trip the read timeout.
DEADLINE_FACTOR = 3.0

# Belt and braces for messages: anything shaped like a credential is blanked even if it was
# never registered as a secret (a JWT, an Authorization header value).
_SECRET_SHAPES = re.compile(
    r"(eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)|((?:Bearer|Basic)\s+)[A-Za-z0-9+/=._~-]{16,}"
)
# Bearer tokens are found by their last _KEY characters: runs of token characters are cut out
# of a message (in C) and looked up window by window, so the cost of redacting a message does
# not grow with the number of live tokens. Shorter tokens, or ones with other characters, are
# replaced one by one like passwords.
_KEY = 16
_SHAPE_REACH = 4096
_TOKEN_RUN = re.compile(rf"[A-Za-z0-9._~+/=-]{{{_KEY},}}")


class RequestObserver(Protocol):
    """What the client reports about its traffic (metrics implement this; registry imports none)."""

    def on_request(self, registry: str, method: str, code: str, seconds: float) -> None:
        """One HTTP exchange ended: ``code`` is the status ("200") or an error label ("timeout")."""

    def on_ratelimit(self, registry: str, remaining: float) -> None:
        """The registry said how many requests are left (``RateLimit-Remaining``)."""


@dataclasses.dataclass(frozen=True)
class Response:
    """One exchange, fully read (within the size limit of what was asked)."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL


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


class Transport:
    """Sends exchanges to one registry host and words what goes wrong.

    At most ``settings.max_concurrency`` exchanges are in flight, spread round-robin over a few
    small connection pools made on first use. Every message it words names the registry and has
    the secrets it was told about (:meth:`add_secret`) blanked.
    """

    def __init__(
        self,
        settings: config.RegistrySettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        """Nothing is connected until the first exchange; ``transport`` replaces the network."""
        self.settings = settings
        self.name = settings.host
        self.base = httpx.URL(f"{settings.scheme}://{models.api_host(settings.host)}")
        self.deadline = max(1.0, settings.timeout * DEADLINE_FACTOR)
        self._observer = observer
        self._transport = transport
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        # Created on first use, inside the running loop: httpx/anyio objects made outside it
        # (a CLI building clients before asyncio.run) would belong to no loop or the wrong one.
        self.pools: list[httpx.AsyncClient] = []
        self._next_pool: Iterator[httpx.AsyncClient] = iter(())
        self._closed = False
        self._redactor = Redactor()
        for secret in (settings.password, settings.push_password):
            if secret:
                self._redactor.add(secret.reveal())

    async def aclose(self) -> None:
        """Close every connection pool. Idempotent; no exchange can be sent afterwards."""
        self._closed = True
        pools, self.pools = self.pools, []
        self._next_pool = iter(())
        for pool in pools:
            await pool.aclose()

    def _pool(self) -> httpx.AsyncClient:
        """The next connection pool, round-robin; the pools are made on the first call."""
        if self._closed:
            raise RuntimeError(f"the transport to {self.name} is closed")
        if not self.pools:
            self.pools = self._make_pools()
            self._next_pool = itertools.cycle(self.pools)
        return next(self._next_pool)

    def _make_pools(self) -> list[httpx.AsyncClient]:
        timeout = httpx.Timeout(self.settings.timeout)
        headers = {"User-Agent": USER_AGENT}
        if self._transport is not None:
            return [
                httpx.AsyncClient(
                    transport=self._transport,
                    timeout=timeout,
                    headers=headers,
                    follow_redirects=True,
                )
            ]
        concurrency = self.settings.max_concurrency
        count = min(MAX_CLIENTS, max(1, math.ceil(concurrency / CONNECTIONS_PER_CLIENT)))
        per_client = max(1, math.ceil(concurrency / count))
        context = ssl_context(self.settings) if self.settings.scheme == "https" else None
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        return [
            # always verified: insecure means plain HTTP, never "HTTPS without checking"
            httpx.AsyncClient(
                timeout=timeout,
                limits=limits,
                verify=context or True,
                headers=headers,
                follow_redirects=True,
            )
            for _ in range(count)
        ]

    # --- one exchange ----------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        max_body: int,
        what: str,
        follow_redirects: bool = True,
    ) -> Response:
        """One HTTP exchange, read within limits, whatever its status.

        Transport failures and our own deadline raise RegistryUnavailable; answers that are no
        HTTP (headers over MAX_HEADER_BYTES, a redirect loop, an undecodable or oversized body)
        raise ProtocolError. Every exchange is reported to the observer.
        """
        client = self._pool()
        code = "error"
        async with self._semaphore:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.deadline):
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
            except (httpx.HTTPError, TimeoutError, ssl.SSLError) as exc:
                # ssl.SSLError: httpcore lets a TLS alert after the handshake (a registry refusing
                # the client certificate, TLS 1.3) through unwrapped
                code, error = self._translate(what, exc)
                raise error from exc
            finally:
                if self._observer is not None:
                    self._observer.on_request(
                        self.name, method, code, time.perf_counter() - started
                    )
        remaining = parse_ratelimit_remaining(response.headers.get("ratelimit-remaining"))
        if remaining is not None and self._observer is not None:
            self._observer.on_ratelimit(self.name, remaining)
        return Response(response.status_code, response.headers, body, response.url)

    def _translate(
        self, what: str, exc: httpx.HTTPError | TimeoutError | ssl.SSLError
    ) -> tuple[str, errors.RegistryError]:
        """The metric label and the watchdog error for a failed exchange (the one mapping)."""
        if isinstance(exc, ssl.SSLError):
            return "tls_error", self._unavailable(what, "TLS failed" + _tls_hint(exc), exc)
        if isinstance(exc, httpx.TimeoutException):
            return "timeout", self._unavailable(what, "timed out", exc)
        if isinstance(exc, TimeoutError):
            # our own deadline: the registry kept answering, too slowly to ever finish
            return "timeout", errors.RegistryUnavailable(
                self.message(what, f"timed out: no complete answer in {self.deadline:g}s"),
                registry=self.name,
            )
        if isinstance(exc, httpx.ConnectError):
            if _is_tls(exc):
                hint = _tls_hint(exc)
                return "tls_error", self._unavailable(what, "TLS handshake failed" + hint, exc)
            return "connect_error", self._unavailable(what, "cannot connect", exc)
        if isinstance(exc, httpx.RemoteProtocolError):
            if _HEADERS_TOO_LARGE in str(exc):
                return "headers_too_large", self.protocol(
                    what, f"the response headers are over the {MAX_HEADER_BYTES}-byte limit"
                )
            return "protocol_error", self._unavailable(what, "connection broken", exc)
        if isinstance(exc, httpx.NetworkError):
            return "network_error", self._unavailable(what, "network error", exc)
        if isinstance(exc, httpx.TooManyRedirects):
            return "redirect_loop", self.protocol(what, "too many redirects")
        if isinstance(exc, httpx.DecodingError):
            return "decoding_error", self.protocol(what, "the body could not be decoded")
        return "http_error", self.protocol(what, f"{type(exc).__name__}")

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
            raise self.protocol(
                what, f"body of {int(declared)} bytes is over the {limit}-byte limit"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                if success:
                    raise self.protocol(what, f"body is over the {limit}-byte limit")
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            chunks.append(chunk)
        return b"".join(chunks)

    # --- words -------------------------------------------------------------------------------

    @property
    def secrets(self) -> frozenset[str]:
        """Every string blanked in messages now: the permanent secrets and the live tokens."""
        return self._redactor.secrets

    def add_secret(self, *secrets: str) -> None:
        """Blank these strings (a password, an identity token) in every message from now on."""
        for secret in secrets:
            self._redactor.add(secret)

    def hold_secret(self, secret: str) -> None:
        """Blank ``secret`` (a bearer token) until as many :meth:`release_secret` calls."""
        self._redactor.hold(secret)

    def release_secret(self, secret: str) -> None:
        """One holder of ``secret`` let it go (the token expired or left the cache)."""
        self._redactor.release(secret)

    def message(self, what: str, detail: str) -> str:
        """``registry <host>: <what>: <detail>`` on one line, secrets blanked."""
        # Blanked before it is cut: a secret cut in two at the limit would no longer match.
        return errors.truncate(self.redact(f"registry {self.name}: {what}: {detail}"), 400)

    def body_text(self, resp: Response) -> str:
        """The start of an answer's body for a message, secrets blanked."""
        if not resp.body:
            return "(no body)"
        return self._redactor.shown(resp.body.decode("utf-8", "replace"), self.redact)

    def redact(self, text: str) -> str:
        """``text`` with every known secret and anything shaped like a credential blanked."""
        return _SECRET_SHAPES.sub(lambda m: (m.group(2) or "") + "***", self._redactor.redact(text))

    def protocol(self, what: str, detail: str) -> errors.ProtocolError:
        """The registry answered something this client cannot take."""
        return errors.ProtocolError(self.message(what, detail), registry=self.name)

    def unexpected(self, what: str, resp: Response) -> errors.ProtocolError:
        """A status the caller has no meaning for."""
        return errors.ProtocolError(
            self.message(what, f"unexpected HTTP {resp.status}: {self.body_text(resp)}"),
            registry=self.name,
            status=resp.status,
        )

    def temporary_error(self, what: str, resp: Response) -> errors.RegistryError | None:
        """RateLimited for a 429, RegistryUnavailable for a 5xx, else None."""
        if resp.status == 429:
            retry_after = retry.parse_retry_after(resp.headers.get("retry-after"))
            after = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return errors.RateLimited(
                self.message(what, f"HTTP 429 rate limited{after}"),
                registry=self.name,
                retry_after=retry_after,
            )
        if resp.status >= 500:
            return errors.RegistryUnavailable(
                self.message(what, f"HTTP {resp.status}: {self.body_text(resp)}"),
                registry=self.name,
                status=resp.status,
            )
        return None

    def _unavailable(
        self, what: str, detail: str, exc: BaseException
    ) -> errors.RegistryUnavailable:
        reason = str(exc) or type(exc).__name__
        return errors.RegistryUnavailable(
            self.message(what, f"{detail}: {reason}"), registry=self.name
        )


def ssl_context(settings: config.RegistrySettings) -> ssl.SSLContext:
    """The verifying TLS context for ``settings.host``: the default trust (certifi's bundle, or
    what SSL_CERT_FILE / SSL_CERT_DIR name, as httpx does) plus the registry's own CA files
    (``ca_file``, certs.d), and its client certificate (mTLS) when it has one.

    One context per registry, shared by its pools. Raises ConfigError when a file does not load
    (``config check`` reports the same problems earlier).
    """
    material = settings.tls_material()
    context = httpx.create_ssl_context()
    try:
        for ca in material.ca_files:
            context.load_verify_locations(cafile=ca)
        if material.client_cert:
            context.load_cert_chain(
                material.client_cert, material.client_key, password=tls.no_passphrase
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise errors.ConfigError(
            [f"registries: {settings.host}: cannot load its TLS files: {reason}"]
        ) from None
    return context


def _tls_hint(exc: BaseException) -> str:
    """What to do about the usual TLS failures: an untrusted CA, a refused client certificate."""
    text = f"{getattr(exc, 'reason', '') or ''} {exc}".upper()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return " (a private CA? trust it with ca_file or certs.d; guard: --ca-file)"
    if "ALERT" in text and "CERTIFICATE" in text:
        return " (the registry refused the client certificate, or wants one: client_cert)"
    return ""


class Redactor:
    """A set of secrets to blank in text: permanent ones (:meth:`add`) and counted ones
    (:meth:`hold`/:meth:`release`, for bearer tokens that live only as long as a cache keeps
    them). Redacting costs the same whatever the number of tokens held."""

    def __init__(self) -> None:
        self._permanent: set[str] = set()
        self._held: collections.Counter[str] = collections.Counter()
        # held tokens of token characters, by their last _KEY characters
        self._by_key: dict[str, set[str]] = {}
        self._plain: list[str] | None = []  # replaced one by one, longest first; None: stale
        self._lengths: collections.Counter[int] = collections.Counter()  # of indexed tokens

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._permanent) | frozenset(self._held)

    def __len__(self) -> int:
        return len(self._permanent | self._held.keys())

    def add(self, secret: str) -> None:
        if secret and secret not in self._permanent:
            self._permanent.add(secret)
            self._plain = None

    def hold(self, secret: str) -> None:
        if not secret:
            return
        self._held[secret] += 1
        if self._held[secret] > 1:
            return
        if _indexable(secret):
            self._by_key.setdefault(secret[-_KEY:], set()).add(secret)
            self._lengths[len(secret)] += 1
        else:
            self._plain = None

    def release(self, secret: str) -> None:
        if self._held.get(secret, 0) == 0:
            return
        self._held[secret] -= 1
        if self._held[secret] > 0:
            return
        del self._held[secret]
        if _indexable(secret):
            same = self._by_key.get(secret[-_KEY:])
            if same is not None:
                same.discard(secret)
                if not same:
                    del self._by_key[secret[-_KEY:]]
            self._lengths[len(secret)] -= 1
            if self._lengths[len(secret)] == 0:
                del self._lengths[len(secret)]
        else:
            self._plain = None

    def shown(self, text: str, redact: Callable[[str], str]) -> str:
        """The start of ``text`` as a message shows it (one line, errors.truncate's length),
        blanked by ``redact`` without scanning all of a long body.

        Only a prefix of the flattened text is scanned for tokens (tokens hold no whitespace),
        grown until what is shown ends before the last ``longest`` characters scanned, so that
        no token cut at the end of the prefix can be shown in part (a 64 KiB body of base64
        would otherwise be scanned window by window).
        """
        text = self._replace_plain(text)  # before flattening: a password may hold spaces
        flat = " ".join(text.split())
        limit = errors.MAX_BODY_IN_MESSAGE
        # at least _SHAPE_REACH: credential-shaped text no one registered (a JWT) is blanked by
        # its shape, which a cut could break too
        longest = max(max(self._lengths, default=0), _SHAPE_REACH)
        cut = limit + 2 * longest
        while True:
            blanked = redact(flat[:cut])
            if cut >= len(flat) or len(blanked) >= limit + longest:
                return errors.truncate(blanked, limit)
            cut *= 2

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        text = self._replace_plain(text)
        if not self._by_key:
            return text
        shortest = min(self._lengths)
        spans: list[tuple[int, int]] = []
        for run in _TOKEN_RUN.finditer(text):
            if run.end() - run.start() >= shortest:
                spans.extend(self._token_spans(run.group(), run.start()))
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end in sorted(spans):
            if end <= last:
                continue
            if start >= last:  # else it overlaps the span just blanked: extend that one
                out.append(text[last:start])
                out.append("***")
            last = end
        out.append(text[last:])
        return "".join(out)

    def _replace_plain(self, text: str) -> str:
        if self._plain is None:
            plain = self._permanent | {s for s in self._held if not _indexable(s)}
            self._plain = sorted(plain, key=len, reverse=True)
        for secret in self._plain:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _token_spans(self, run: str, offset: int) -> list[tuple[int, int]]:
        """Where held tokens occur in ``run`` (a run of token characters), as text offsets."""
        if run in self._held:
            return [(offset, offset + len(run))]  # the usual case: a token standing alone
        spans: list[tuple[int, int]] = []
        by_key = self._by_key
        for end in range(_KEY, len(run) + 1):
            candidates = by_key.get(run[end - _KEY : end])
            if not candidates:
                continue
            for secret in candidates:
                start = end - len(secret)
                if start >= 0 and run.startswith(secret, start):
                    spans.append((offset + start, offset + end))
        return spans


def _indexable(secret: str) -> bool:
    """A secret the token index can find: long enough, and all token characters."""
    return len(secret) >= _KEY and _TOKEN_RUN.fullmatch(secret) is not None


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc) or "certificate" in str(exc).lower()
