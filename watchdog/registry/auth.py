"""Registry authentication: bearer tokens and the 401 handshake.

:class:`Handshake` is what the client calls for every exchange: it answers the challenge the
registry last made up front, and on a 401 takes the new challenge (parsed by
:mod:`watchdog.registry.challenges`), finds credentials (see
:mod:`watchdog.registry.credentials`), fetches a token from the realm over the same
:class:`~watchdog.registry.transport.Transport` (its limits, deadline and observer apply) and
tries once more. The retry loop around temporary failures stays with the client.

Where credentials may go (the rules of :meth:`Handshake._realm` and :func:`may_follow`, as
crane keeps them): to the registry's own origin, and to the token realm its first challenge
named; never in clear text to another host, never across an https -> http redirect, never in
answer to a 401 from another origin a request was redirected to.

Not an ``httpx.Auth`` flow: httpx would send the token request itself, outside the transport's
body limits, deadline and per-exchange metrics.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from watchdog import config, errors, safejson
from watchdog.registry import challenges, credentials, transport

DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_BODY_BYTES = 1024 * 1024
# A bearer token travels in an Authorization header on every request: real ones are a few KiB,
# and servers refuse headers much beyond 8-64 KiB (a 600 KB token came back as HTTP 431).
MAX_TOKEN_LENGTH = 64 * 1024
# A token is used at most until this share of its lifetime has passed (capped below), so that a
# request never leaves with a token that expires on the way.
_EARLY_FRACTION = 0.2
_EARLY_CAP = 30.0
# Live tokens per registry identity: about one per repository watched (and one more per restored
# repository). Beyond this the least recently used goes: a registry that names a new scope in
# every challenge costs token requests, never memory.
MAX_TOKENS = 4096
# Expired tokens are swept out (and leave the redaction set) at most this often (cache clock).
_SWEEP_EVERY = 30.0
# A token request that carries credentials follows its redirects itself, each checked.
MAX_TOKEN_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# --- tokens -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenKey:
    realm: str
    service: str
    scope: str  # space-separated scopes, sorted; "" for a scope-less (ping) token
    identity: str


@dataclasses.dataclass(frozen=True)
class Token:
    value: str = dataclasses.field(repr=False)
    expires_at: float  # on the cache's clock


class TokenCache:
    """Bearer tokens by (realm, service, scope, identity), each until a little before it expires.

    Holds at most ``max_entries`` tokens (the least recently used leaves first) and sweeps out
    expired ones as time passes. ``on_add``/``on_drop`` are told of every token that enters and
    leaves, so that a redaction set can hold exactly the live ones.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = MAX_TOKENS,
        on_add: Callable[[str], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._max = max(1, max_entries)
        self._on_add = on_add
        self._on_drop = on_drop
        self._tokens: collections.OrderedDict[TokenKey, Token] = collections.OrderedDict()
        self._next_sweep = clock() + _SWEEP_EVERY

    def get(self, key: TokenKey) -> str | None:
        """The cached token for ``key`` if it is still comfortably valid."""
        now = self._clock()
        self._sweep(now)
        token = self._tokens.get(key)
        if token is None:
            return None
        if now >= token.expires_at:
            self._remove(key)
            return None
        self._tokens.move_to_end(key)
        return token.value

    def put(self, key: TokenKey, value: str, expires_in: float | None) -> None:
        """Remember ``value`` for ``expires_in`` seconds (default 60) less a safety margin."""
        now = self._clock()
        lifetime = DEFAULT_TOKEN_LIFETIME if not expires_in or expires_in <= 0 else expires_in
        margin = min(lifetime * _EARLY_FRACTION, _EARLY_CAP)
        self._remove(key)
        self._tokens[key] = Token(value, now + lifetime - margin)
        if self._on_add is not None:
            self._on_add(value)
        self._sweep(now)
        while len(self._tokens) > self._max:
            self._remove(next(iter(self._tokens)))

    def invalidate(self, key: TokenKey) -> None:
        self._remove(key)

    def values(self) -> list[str]:
        """The tokens held now (for tests and the bench)."""
        return [t.value for t in self._tokens.values()]

    def __len__(self) -> int:
        return len(self._tokens)

    def _remove(self, key: TokenKey) -> None:
        token = self._tokens.pop(key, None)
        if token is not None and self._on_drop is not None:
            self._on_drop(token.value)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        for key in [k for k, t in self._tokens.items() if now >= t.expires_at]:
            self._remove(key)


def scope_for(repository: str, actions: tuple[str, ...]) -> str:
    """``repository:<name>:pull,push`` (the token spec's resource scope)."""
    return f"repository:{repository}:{','.join(actions)}"


def join_scopes(*scopes: str | None) -> str:
    """Distinct non-empty scopes (each may itself be space-separated), sorted, space-joined."""
    seen: set[str] = set()
    for scope in scopes:
        if scope:
            seen.update(s for s in scope.split() if s)
    return " ".join(sorted(seen))


def token_query(challenge: challenges.Challenge, scope: str) -> list[tuple[str, str]]:
    """Query parameters for a token GET: ``service`` and one ``scope`` per scope."""
    params: list[tuple[str, str]] = []
    if challenge.service:
        params.append(("service", challenge.service))
    params.extend(("scope", s) for s in scope.split())
    return params


def parse_token_response(body: bytes) -> tuple[str, float | None]:
    """``(token, expires_in)`` from a token service answer (``token`` or ``access_token``)."""
    try:
        value = safejson.loads(body)
    except safejson.TooDeep as exc:
        raise errors.ProtocolError(f"token service answer refused: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise errors.ProtocolError("token service answered something that is not JSON") from None
    if not isinstance(value, dict):
        raise errors.ProtocolError("token service answered JSON that is not an object")
    token = value.get("token") or value.get("access_token")
    if not isinstance(token, str) or not token:
        raise errors.ProtocolError("token service answered no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise errors.ProtocolError(
            f"token service answered a token of {len(token)} bytes "
            f"(over the {MAX_TOKEN_LENGTH}-byte limit for an Authorization header)"
        )
    expires_in = value.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        expires_in = None
    return token, float(expires_in) if expires_in is not None else None


# --- the handshake ------------------------------------------------------------------------------


class Handshake:
    """Authenticates the exchanges of one registry identity over ``wire``.

    Credentials are looked up once, lazily (only when the registry asks for them), and bearer
    tokens are cached per (realm, service, scope, identity) until a little before they expire;
    concurrent requests for the same token make one fetch.
    """

    def __init__(
        self,
        settings: config.RegistrySettings,
        wire: transport.Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
        docker_config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """``env`` replaces ``os.environ`` for credential lookup; ``docker_config_path`` names the
        docker ``config.json`` to read instead of the usual places; ``clock`` drives the cache."""
        self.settings = settings
        self.wire = wire
        self._env = env
        self._docker_config_path = (
            pathlib.Path(docker_config_path) if docker_config_path is not None else None
        )
        self._tokens = TokenCache(
            clock, max_entries=MAX_TOKENS, on_add=wire.hold_secret, on_drop=wire.release_secret
        )
        # [lock, users]: a key's lock lives while someone waits on it, not for every scope seen
        self._token_locks: dict[TokenKey, list[Any]] = {}
        # The challenge the registry last made: answered up front from then on, which saves a
        # round trip per request on registries that want auth.
        self._challenge: challenges.Challenge | None = None
        # The first token realm the registry named: credentials go to the registry's own origin
        # and to this one only (as crane keeps the realm of its ping).
        self._realm_pinned: httpx.URL | None = None
        self._credentials: credentials.Credentials | None = None
        self._credentials_loaded = False
        self._credentials_lock = asyncio.Lock()

    async def send(
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
    ) -> transport.Response:
        """One authenticated attempt: the exchange, and once more after a 401 with a fresh answer.

        Returns the response for any status but 401/403; raises AuthError for those (naming the
        identity) and for a challenge it cannot answer; token-service failures raise as the
        transport words them (RateLimited, RegistryUnavailable, ProtocolError, AuthError).
        """

        async def exchange(authorization: str | None) -> transport.Response:
            resp = await self.wire.send(
                method,
                url,
                headers=_with_auth(headers, authorization),
                content=content,
                max_body=max_body,
                what=what,
                follow_redirects=follow_redirects,
            )
            if resp.status == 401 and not self._own(resp.url):
                # httpx dropped our Authorization on the way (another origin); answering that
                # origin's challenge would hand it this registry's credentials or a token.
                raise self._auth_error(
                    what,
                    f"HTTP 401 from {_origin_text(resp.url)}, where the registry redirected the "
                    "request: refusing to answer another origin's challenge with this "
                    "registry's credentials",
                    401,
                )
            return resp

        if not self._own(url):
            raise self.wire.protocol(
                what, f"refusing to authenticate a request to {_origin_text(url)}"
            )
        sent: str | None = None
        if self._challenge is not None:
            sent = await self._authorization(self._challenge, scope, what)
        resp = await exchange(sent)
        if resp.status == 401:
            fresh = await self._answer(resp, scope, what, sent)
            if fresh != sent:
                resp = await exchange(fresh)
        if resp.status in (401, 403):
            raise await self._refused(what, resp)
        return resp

    def _own(self, url: httpx.URL) -> bool:
        """True for a URL of the registry itself (its origin, or that host upgraded to https)."""
        return may_follow(self.wire.base, url)

    async def _answer(
        self, resp: transport.Response, scope: str, what: str, sent: str | None
    ) -> str:
        """The Authorization header answering the challenge of the 401 ``resp``; AuthError when
        there is no challenge to answer or nothing to answer it with."""
        challenge = challenges.pick(challenges.parse(resp.headers.get_list("www-authenticate")))
        if challenge is None:
            raise self._auth_error(what, "HTTP 401 without a Bearer or Basic challenge", 401)
        # Retry once: when we sent nothing, or a token the registry no longer takes (revoked,
        # expired early, too narrow a scope), or the registry changed its mind about how.
        self._challenge = challenge
        stale = sent.split(" ", 1)[1] if sent and sent.startswith("Bearer ") else None
        fresh = await self._authorization(
            challenge, join_scopes(scope, challenge.scope), what, stale=stale
        )
        if fresh is None:
            creds = await self.find_credentials()
            raise self._auth_error(
                what,
                f"the registry wants {challenge.scheme.capitalize()} credentials and "
                f"{'none are configured' if creds is None else 'those found have no password'}",
                401,
            )
        return fresh

    async def _refused(self, what: str, resp: transport.Response) -> errors.AuthError:
        """The AuthError for a 401/403 that authenticating did not cure."""
        creds = await self.find_credentials() if self._challenge is not None else None
        who = creds.identity if creds is not None else "<anonymous>"
        hint = ""
        if resp.status == 401:
            ch = challenges.pick(challenges.parse(resp.headers.get_list("www-authenticate")))
            if ch is not None and ch.error:
                hint = f" ({ch.error})"
        return self._auth_error(
            what, f"HTTP {resp.status}{hint} as {who}: {self.wire.body_text(resp)}", resp.status
        )

    async def find_credentials(self) -> credentials.Credentials | None:
        """Credentials for this host, looked up once (may run a credential helper: in a thread)."""
        async with self._credentials_lock:
            if not self._credentials_loaded:
                creds = await asyncio.to_thread(
                    credentials.resolve_credentials,
                    self.settings,
                    self._env,
                    config_path=self._docker_config_path,
                )
                if creds is not None:
                    self.wire.add_secret(*creds.secrets())
                self._credentials = creds
                self._credentials_loaded = True
        return self._credentials

    async def _authorization(
        self, challenge: challenges.Challenge, scope: str, what: str, *, stale: str | None = None
    ) -> str | None:
        """The Authorization header answering ``challenge`` for ``scope``, or None for "no way".

        ``stale`` is a token the registry just refused: a cached copy of it is not reused.
        """
        creds = await self.find_credentials()
        if challenge.scheme == "basic":
            return creds.basic_header() if creds is not None else None
        realm = challenge.realm or ""
        key = TokenKey(realm, challenge.service or "", scope, creds.identity if creds else "")
        cached = self._tokens.get(key)
        if cached is not None and cached != stale:
            return f"Bearer {cached}"
        # One fetch per key at a time: fifty HEADs starting together make one token request.
        entry = self._token_locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                cached = self._tokens.get(key)
                if cached is not None and cached != stale:
                    return f"Bearer {cached}"
                token, expires_in = await self._fetch_token(challenge, scope, creds, what)
                self._tokens.put(key, token, expires_in)
                return f"Bearer {token}"
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._token_locks[key]

    def _realm(
        self, challenge: challenges.Challenge, creds: credentials.Credentials | None, what: str
    ) -> httpx.URL:
        """The token service URL of a Bearer ``challenge``, once it is fit to be sent ``creds``.

        Every rule about where a token request may go lives here.
        """
        try:
            realm_url = httpx.URL(challenge.realm or "")
        except httpx.InvalidURL:
            raise self.wire.protocol(what, "the Bearer challenge has an unusable realm") from None
        if realm_url.scheme not in ("http", "https"):
            raise self.wire.protocol(
                what, f"the Bearer realm is not an http(s) URL ({realm_url.scheme})"
            )
        pinned = self._realm_pinned
        if pinned is None:
            self._realm_pinned = pinned = realm_url
        if creds is None:
            return realm_url  # nothing of ours travels with an anonymous token request
        if realm_url.scheme == "http":
            if not self.settings.insecure:
                raise self._auth_error(
                    what,
                    f"refusing to send credentials to a plain-HTTP realm ({_shown(realm_url)})",
                )
            if realm_url.host != self.wire.base.host:
                # insecure allows plain HTTP to the registry itself, not cleartext to elsewhere
                raise self._auth_error(
                    what,
                    "refusing to send credentials in clear text to a plain-HTTP realm on "
                    f"another host ({_shown(realm_url)})",
                )
        if _origin(realm_url) not in (_origin(pinned), _origin(self.wire.base)):
            raise self._auth_error(
                what,
                f"the registry now names a token realm on {_origin_text(realm_url)}, but its "
                f"first challenge named {_origin_text(pinned)}: refusing to send credentials "
                "to a realm that changed (restart tag-watchdog if the registry moved its auth)",
            )
        return realm_url

    async def _fetch_token(
        self,
        challenge: challenges.Challenge,
        scope: str,
        creds: credentials.Credentials | None,
        what: str,
    ) -> tuple[str, float | None]:
        """A fresh token (and its lifetime) for ``scope`` from the challenge's realm."""
        realm_url = self._realm(challenge, creds, what)
        method, url, headers, content = _token_request(realm_url, challenge, scope, creds)
        ask = f"{what}: {method} {_shown(realm_url)}"
        # httpx would re-send a POST body (an identity token) to any 307 target and keeps the
        # Authorization header on an https->http hop of the same host: with credentials aboard,
        # every redirect is checked here instead.
        follow = creds is None
        resp = await self.wire.send(
            method,
            url,
            headers=headers,
            content=content,
            max_body=MAX_TOKEN_BODY_BYTES,
            what=ask,
            follow_redirects=follow,
        )
        hops = 0
        while not follow and resp.status in _REDIRECTS and resp.headers.get("location"):
            hops += 1
            if hops > MAX_TOKEN_REDIRECTS:
                raise self.wire.protocol(ask, "too many redirects")
            try:
                target = resp.url.join(resp.headers["location"])
            except httpx.InvalidURL:
                raise self.wire.protocol(ask, "the token service redirected to nowhere") from None
            if not may_follow(resp.url, target):
                raise self._auth_error(
                    ask,
                    f"the token service redirected to {_origin_text(target)}: refusing to send "
                    "credentials to another origin or over plain HTTP",
                )
            if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                method, content = "GET", None  # what a browser (and httpx) does
                headers = {k: v for k, v in headers.items() if k != "Content-Type"}
            resp = await self.wire.send(
                method,
                target,
                headers=headers,
                content=content,
                max_body=MAX_TOKEN_BODY_BYTES,
                what=ask,
                follow_redirects=False,
            )
        if resp.status == 200:
            try:
                token, expires_in = parse_token_response(resp.body)
            except errors.ProtocolError as exc:
                raise self.wire.protocol(ask, str(exc)) from exc
            return token, expires_in  # the cache puts it in the redaction set while it lives
        temporary = self.wire.temporary_error(ask, resp)
        if temporary is not None:
            raise temporary
        who = creds.identity if creds is not None else "<anonymous>"
        raise self._auth_error(
            ask,
            f"HTTP {resp.status} for {who}, scope {scope or '(none)'}: {self.wire.body_text(resp)}",
            resp.status,
        )

    def _auth_error(self, what: str, detail: str, status: int | None = None) -> errors.AuthError:
        return errors.AuthError(
            self.wire.message(what, detail), registry=self.wire.name, status=status
        )


def _token_request(
    realm_url: httpx.URL,
    challenge: challenges.Challenge,
    scope: str,
    creds: credentials.Credentials | None,
) -> tuple[str, httpx.URL, dict[str, str], bytes | None]:
    """Method, URL, headers and body of the token request for ``scope``."""
    headers: dict[str, str] = {"Accept": "application/json"}
    if creds is not None and creds.identity_token:
        # OAuth2 refresh-token grant, as docker does with an identity token.
        form = [("grant_type", "refresh_token"), ("client_id", "tag-watchdog")]
        form.extend(token_query(challenge, scope))
        form.append(("refresh_token", creds.identity_token.reveal()))
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return "POST", realm_url, headers, urllib.parse.urlencode(form).encode()
    basic = creds.basic_header() if creds is not None else None
    if basic:
        headers["Authorization"] = basic
    url = realm_url.copy_merge_params(tuple(token_query(challenge, scope)))
    return "GET", url, headers, None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


def _origin_text(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")


def may_follow(source: httpx.URL, target: httpx.URL) -> bool:
    """True when a request carrying credentials for ``source`` may go to ``target``: the same
    origin, or the same host upgraded from http to https on the default ports (httpx's rule for
    keeping Authorization). Never another host, another port, or https to http."""
    if _origin(source) == _origin(target):
        return True
    return (
        source.scheme == "http"
        and target.scheme == "https"
        and source.host == target.host
        and _origin(source)[2] == 80
        and _origin(target)[2] == 443
    )


def _shown(realm_url: httpx.URL) -> str:
    """The realm as messages show it: host and path, never a query that might hold a secret."""
    return f"token from {realm_url.host}{realm_url.path}"


def _with_auth(headers: Mapping[str, str], authorization: str | None) -> dict[str, str]:
    out = dict(headers)
    if authorization:
        out["Authorization"] = authorization
    return out
