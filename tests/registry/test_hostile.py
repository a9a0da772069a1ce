"""The registry client facing registries that misbehave on purpose (issue 14, items 1-3 and 7).

Every registry, token service and redirect target here is a :class:`hostile.HostileServer` on
127.0.0.1 that records what it was sent: the tests prove a credential never reached a host it
must not reach, that nesting too deep is an ordinary protocol error, and that the token cache and
the redaction set hold the live tokens only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import hostile
from watchdog import config, errors, observe, safejson
from watchdog.registry import auth, client, transport

USER = "alice"
PASSWORD = "MARKER-password-4711"
IDENTITY_TOKEN = "MARKER-identity-token-0815"
DIGEST = "sha256:" + "a" * 64


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def make_server() -> Iterator[Callable[..., hostile.HostileServer]]:
    started: list[hostile.HostileServer] = []

    def make(handler: hostile.Handler | None = None, **kw: Any) -> hostile.HostileServer:
        server = hostile.HostileServer(handler, **kw).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def settings(server: hostile.HostileServer, **overrides: Any) -> config.RegistrySettings:
    values: dict[str, Any] = {
        "host": server.host,
        "username": USER,
        "password": config.Secret(PASSWORD),
        "insecure": True,
        "timeout": 5.0,
        "use_docker_config": False,
    }
    values.update(overrides)
    return config.RegistrySettings(**values)


def make_client(server: hostile.HostileServer, **overrides: Any) -> client.RegistryClient:
    return client.RegistryClient(settings(server, **overrides), sleep=_no_sleep)


def basic_ok(seen: hostile.Seen) -> bool:
    return seen.basic_user() == (USER, PASSWORD)


def carried_credentials(server: hostile.HostileServer) -> list[hostile.Seen]:
    """The requests ``server`` received with a password, a token or an identity token."""
    return [
        r
        for r in server.seen()
        if r.authorization or PASSWORD.encode() in r.body or IDENTITY_TOKEN.encode() in r.body
    ]


def token_service(token: str = "tok-" + "x" * 40) -> hostile.Handler:
    def handle(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/token":
            return hostile.Reply(200, {"token": token, "expires_in": 300})
        return hostile.Reply(404, {"errors": [{"code": "NAME_UNKNOWN"}]})

    return handle


# --- item 1: credentials to a foreign realm after a redirect ------------------------------------


async def test_a_401_from_a_redirect_target_is_not_answered_with_our_credentials(make_server):
    other = make_server()  # another origin (another port): it wants a token of its own realm

    def other_handle(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/token":
            return hostile.Reply(200, {"token": "foreign-" + "t" * 40})
        return hostile.Reply(401, b"{}", hostile.bearer_challenge(other.url + "/token"))

    other.handler = other_handle

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if not basic_ok(seen):
            return hostile.Reply(401, b"{}", hostile.basic_challenge())
        if seen.path == "/v2/":
            return hostile.Reply(200, {})
        return hostile.redirect(other.url + seen.path)

    reg = make_server(registry)
    async with make_client(reg) as rc:
        await rc.ping()  # one successful authentication first
        with pytest.raises(errors.AuthError) as exc:
            await rc.get_manifest("app", "1.0.0")
    message = str(exc.value)
    assert "redirected" in message and f"127.0.0.1:{other.port}" in message, message
    assert not exc.value.temporary
    assert PASSWORD not in message
    assert other.seen("/v2/app/manifests/1.0.0"), "the redirect was followed"
    assert carried_credentials(other) == []
    assert other.seen("/token") == []  # its challenge was not answered at all


async def test_credentials_go_only_to_the_realm_the_registry_named_first(make_server):
    other = make_server(token_service("other-" + "t" * 40))
    token = "reg-" + "t" * 40

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/token":
            return hostile.Reply(200 if basic_ok(seen) else 401, {"token": token})
        if seen.authorization != f"Bearer {token}":
            return hostile.Reply(401, b"{}", hostile.bearer_challenge(reg.url + "/token"))
        if seen.path == "/v2/":
            return hostile.Reply(200, {})
        # then the registry (or whoever speaks for it) names a realm elsewhere
        return hostile.Reply(401, b"{}", hostile.bearer_challenge(other.url + "/token"))

    reg = make_server(registry)
    async with make_client(reg) as rc:
        await rc.ping()
        with pytest.raises(errors.AuthError) as exc:
            await rc.head_manifest("app", "1.0.0")
    assert "realm that changed" in str(exc.value), str(exc.value)
    assert other.seen() == []


# --- item 2: never across a scheme downgrade or in clear text to another host -------------------


@pytest.mark.parametrize("where", ["another host", "the registry's host"])
async def test_basic_credentials_go_in_clear_text_only_to_the_registry_host(make_server, where):
    realm_server = make_server(token_service())
    realm = (realm_server.foreign_url if where == "another host" else realm_server.url) + "/token"

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if not (seen.authorization or "").startswith("Bearer tok-"):
            return hostile.Reply(401, b"{}", hostile.bearer_challenge(realm))
        return hostile.Reply(200, {})

    reg = make_server(registry)
    async with make_client(reg) as rc:
        if where == "another host":
            with pytest.raises(errors.AuthError) as exc:
                await rc.ping()
            assert "clear text" in str(exc.value) and "localhost" in str(exc.value)
            assert realm_server.seen() == []
        else:  # plain HTTP to the (insecure, loopback) registry's own host stays allowed
            await rc.ping()
            assert [r.basic_user() for r in realm_server.seen("/token")] == [(USER, PASSWORD)]


def write_identity_token(tmp_path: Path, host: str) -> dict[str, str]:
    directory = tmp_path / "docker"
    directory.mkdir()
    doc = {"auths": {host: {"identitytoken": IDENTITY_TOKEN}}}
    (directory / "config.json").write_text(json.dumps(doc))
    return {"DOCKER_CONFIG": str(directory), "HOME": str(tmp_path)}


@pytest.mark.parametrize("realm_scheme", ["https", "http"])
async def test_an_identity_token_is_not_re_sent_to_a_redirect_target(
    make_server, tmp_path, monkeypatch, realm_scheme
):
    sink = make_server(token_service())  # plain HTTP, another origin: must see no identity token
    tls = realm_scheme == "https"
    realm_server = make_server(tls=tls, workdir=tmp_path)
    if realm_server.ca_file is not None:
        monkeypatch.setenv("SSL_CERT_FILE", str(realm_server.ca_file))
    realm_server.handler = lambda seen: hostile.redirect(sink.url + "/token", 307)

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if not seen.authorization:
            return hostile.Reply(401, b"{}", hostile.bearer_challenge(realm_server.url + "/token"))
        return hostile.Reply(200, {})

    reg = make_server(registry)
    env = write_identity_token(tmp_path, reg.host)
    rc = client.RegistryClient(
        settings(reg, username=None, password=None, use_docker_config=True),
        sleep=_no_sleep,
        env=env,
    )
    async with rc:
        with pytest.raises(errors.AuthError) as exc:
            await rc.ping()
    message = str(exc.value)
    assert "redirected" in message and IDENTITY_TOKEN not in message, message
    posted = realm_server.seen("/token")
    assert posted and posted[0].form["refresh_token"] == [IDENTITY_TOKEN]  # it was asked once
    assert sink.seen() == []


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("https://a/token", "https://a/other", True),
        ("http://a/token", "https://a/token", True),  # the upgrade httpx allows too
        ("https://a/token", "http://a/token", False),  # a downgrade, same host
        ("https://a/token", "https://b/token", False),
        ("https://a/token", "https://a:8443/token", False),
        ("http://a:5000/token", "https://a:5000/token", False),  # not the default ports
    ],
)
def test_which_redirects_a_credentialed_request_may_follow(source, target, allowed):
    assert auth.may_follow(httpx.URL(source), httpx.URL(target)) is allowed


# --- item 3: JSON nested too deep is a protocol error, not a crash -------------------------------


def nested_registry(where: str) -> hostile.Handler:
    def handle(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/token":
            body = hostile.nested_object("token") if where == "token answer" else {"token": "t"}
            return hostile.Reply(200, body)
        if where == "token answer" and not seen.authorization:
            return hostile.Reply(
                401, b"{}", hostile.bearer_challenge(f"http://{seen.headers['host']}/token")
            )
        if seen.path.endswith("/tags/list"):
            body = hostile.nested_object("tags") if where == "tags/list" else {"tags": ["1.0.0"]}
            return hostile.Reply(200, body)
        if where == "error body":
            return hostile.Reply(404, hostile.nested_object("errors"))
        if where == "manifest":
            return hostile.Reply(
                200,
                hostile.nested_object("manifests"),
                [("Content-Type", "application/vnd.oci.image.index.v1+json")],
            )
        return hostile.Reply(200, {})

    return handle


@pytest.mark.parametrize("where", ["manifest", "tags/list", "error body", "token answer"])
async def test_deeply_nested_json_is_an_ordinary_registry_error(make_server, where):
    reg = make_server(nested_registry(where))
    async with make_client(reg) as rc:
        with pytest.raises(errors.RegistryError) as exc:
            if where == "tags/list":
                await rc.list_tags("app")
            else:
                await rc.get_manifest("app", "1.0.0")
    message = str(exc.value)
    if where == "error body":
        # not a registry error body, so not a definitive 404 either
        assert isinstance(exc.value, errors.RegistryUnavailable), message
    else:
        assert isinstance(exc.value, errors.ProtocolError) and not exc.value.temporary, message
        assert f"nested deeper than {safejson.MAX_DEPTH} levels" in message, message
    assert len(message) < 500 and "\n" not in message


def test_an_image_config_nested_too_deep_is_no_image_info():
    # observe catches ValueError for a config blob that is not JSON; RecursionError escaped it
    with pytest.raises(ValueError, match="deeper than"):
        observe.image_info(hostile.nested_object("config"))


def test_safejson_limits_depth_and_never_recurses():
    ok = "[" * safejson.MAX_DEPTH + "]" * safejson.MAX_DEPTH
    assert safejson.loads(ok) is not None
    with pytest.raises(safejson.TooDeep) as exc:
        safejson.loads(hostile.nested_json(safejson.MAX_DEPTH + 1))
    assert isinstance(exc.value, json.JSONDecodeError) and "deeper than" in str(exc.value)
    # brackets inside strings (and escaped quotes) do not count
    deep_string = json.dumps({"a": "[" * 1000 + '\\"' + "{" * 1000})
    assert safejson.loads(deep_string)["a"].startswith("[[[")
    # objects count like arrays; mixed nesting too
    mixed = '{"a":[' * 40 + "1" + "]}" * 40
    with pytest.raises(safejson.TooDeep):
        safejson.loads(mixed)
    # a UTF-16 body is decoded as json.loads would
    assert safejson.loads(json.dumps({"x": [1]}).encode("utf-16")) == {"x": [1]}


# --- item 7: only live tokens are kept, and redacting many is cheap ------------------------------


def test_the_token_cache_is_bounded_and_tells_the_redaction_set():
    now = [0.0]
    held: list[str] = []
    dropped: list[str] = []
    cache = auth.TokenCache(
        clock=lambda: now[0], max_entries=3, on_add=held.append, on_drop=dropped.append
    )
    keys = [auth.TokenKey("realm", "svc", f"repository:r{i}:pull", "me") for i in range(10)]
    for i, key in enumerate(keys):
        cache.put(key, f"token-{i}", 300)
    assert len(cache) == 3 and sorted(cache.values()) == ["token-7", "token-8", "token-9"]
    assert dropped == [f"token-{i}" for i in range(7)]
    cache.get(keys[7])  # used: now the most recent
    cache.put(keys[0], "token-0b", 300)
    assert sorted(cache.values()) == ["token-0b", "token-7", "token-9"]
    # expired tokens leave on the next sweep, without being asked for
    now[0] = 1000.0
    cache.put(keys[1], "token-1b", 300)
    assert cache.values() == ["token-1b"]
    assert set(held) - set(dropped) == {"token-1b"}


def test_redaction_holds_exactly_the_live_tokens():
    wire = transport.Transport(
        config.RegistrySettings(
            host="example.test", username="u", password=config.Secret("pw-secret")
        )
    )
    tokens = [base64.urlsafe_b64encode(bytes([i]) * 60).decode() for i in range(50)]
    short = "short!tok"
    for token in [*tokens, short]:
        wire.hold_secret(token)
    wire.hold_secret(tokens[0])  # held twice (two cache keys, one token)
    text = f"a {tokens[3]} b x{tokens[4]}y token={tokens[5]}, {short} pw-secret {tokens[0]}"
    out = wire.redact(text)
    assert out == "a *** b x***y token=***, *** *** ***", out
    for token in tokens:
        wire.release_secret(token)
    wire.release_secret(short)
    assert tokens[3] in wire.redact(tokens[3])  # gone with its last holder
    assert wire.redact(tokens[0]) == "***"  # one holder left
    assert wire.secrets == frozenset({"pw-secret", tokens[0]})


async def test_scope_churn_cannot_grow_the_token_cache(make_server, monkeypatch):
    monkeypatch.setattr(auth, "MAX_TOKENS", 8)
    issued: list[str] = []
    used: set[str] = set()

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/token":
            issued.append(f"tok-{len(issued):04d}-" + "z" * 40)
            return hostile.Reply(200, {"token": issued[-1], "expires_in": 3600})
        n = len(reg.requests)
        if not seen.authorization or seen.authorization in used:
            # each token is good once, and every challenge names a new scope: each request
            # makes the client ask for a token of a new (realm, service, scope) of its own
            return hostile.Reply(
                401,
                b"{}",
                hostile.bearer_challenge(reg.url + "/token", scope=f"repository:x{n}:pull"),
            )
        used.add(seen.authorization)
        # the registry echoes the token it was given in its error body
        return hostile.Reply(
            404, {"errors": [{"code": "NAME_UNKNOWN"}], "you sent": seen.authorization}
        )

    reg = make_server(registry)
    async with make_client(reg) as rc:
        for _ in range(30):
            with pytest.raises(errors.NotFound):
                await rc.head_manifest("app", "1.0.0")
        with pytest.raises(errors.RegistryError) as exc:
            await rc.list_tags("app")
        handshake = rc._auth
        assert len(issued) > 30
        assert len(handshake._tokens) <= 8
        assert handshake._token_locks == {}
        live = set(handshake._tokens.values())
        assert {t for t in issued if t in rc._wire.secrets} == live
        assert rc._wire.secrets - live == {
            PASSWORD,
            base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        }
        # the live token the registry echoed is still blanked; the evicted ones are not kept
        assert issued[-1] in live and issued[-1] not in str(exc.value), str(exc.value)
        assert issued[0] not in rc._wire.secrets


def test_a_long_body_of_live_tokens_shows_none_of_them():
    wire = transport.Transport(config.RegistrySettings(host="example.test"))
    tokens = [base64.urlsafe_b64encode(bytes([i]) * 600).decode() for i in range(50)]
    for token in tokens:
        wire.hold_secret(token)
    body = " ".join(tokens * 3).encode()  # 120 KB: only a prefix is scanned
    shown = wire.body_text(transport.Response(400, httpx.Headers(), body, httpx.URL("http://x/")))
    assert shown.startswith("*** *** ***") and len(shown) <= 200
    assert not any(t[:12] in shown or t[-12:] in shown for t in tokens), shown
