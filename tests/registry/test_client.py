"""RegistryClient against a real docker-registry (and a fault proxy in front of it)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from watchdog import config, errors, models
from watchdog.registry import auth, challenges, client, credentials, media, transport

pytestmark = pytest.mark.registry

FAST = client.DEFAULT_RETRY


class Sleeps(list[float]):
    """An injected sleep that records instead of sleeping."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Observer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.ratelimits: list[tuple[str, float]] = []

    def on_request(self, registry: str, method: str, code: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((registry, method, code))

    def on_ratelimit(self, registry: str, remaining: float) -> None:
        self.ratelimits.append((registry, remaining))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(
    settings: config.RegistrySettings, sleeps: Sleeps | None = None, **kwargs: Any
) -> client.RegistryClient:
    kwargs.setdefault("retry", FAST)
    return client.RegistryClient(
        settings, sleep=sleeps if sleeps is not None else Sleeps(), **kwargs
    )


# --- open registry -------------------------------------------------------------------------------


async def test_head_of_an_index_tag_answers_the_index_digest(registry, repo, pusher):
    oci = pusher.index(repo, "1.0.0")
    docker = pusher.index(repo, "1.0.1", docker=True, seed="list")
    async with make_client(registry.settings()) as rc:
        await rc.ping()
        head = await rc.head_manifest(repo, "1.0.0")
        docker_head = await rc.head_manifest(repo, "1.0.1")
    assert head.digest == oci.digest
    assert head.media_type == media.OCI_INDEX
    assert head.size == len(oci.index.body)
    assert docker_head.digest == docker.digest
    assert docker_head.media_type == media.DOCKER_MANIFEST_LIST
    # What this proves: without the list types in Accept, distribution answers a Docker list
    # tag with its amd64 child (a "move"), and an OCI index tag with a 404 MANIFEST_UNKNOWN
    # (a "deletion").
    only_manifests = {"Accept": f"{media.DOCKER_MANIFEST}, {media.OCI_MANIFEST}"}
    async with httpx.AsyncClient(base_url=registry.url, headers=only_manifests) as raw_http:
        raw = await raw_http.head(f"/v2/{repo}/manifests/1.0.1")
        assert raw.headers["docker-content-digest"] == docker.children["linux/amd64"].digest
        raw = await raw_http.get(f"/v2/{repo}/manifests/1.0.0")
        assert raw.status_code == 404 and "MANIFEST_UNKNOWN" in raw.text


async def test_get_manifest_returns_the_exact_bytes_with_a_verified_digest(registry, repo, pusher):
    pushed = pusher.index(repo, "1.0.0", seed="get")
    async with make_client(registry.settings()) as rc:
        by_tag = await rc.get_manifest(repo, "1.0.0", expected_digest=pushed.digest)
        by_digest = await rc.get_manifest(repo, pushed.digest)
        child = pushed.children["linux/arm64/v8"]
        child_manifest = await rc.get_manifest(repo, child.digest)
    assert by_tag == models.Manifest(pushed.digest, media.OCI_INDEX, pushed.index.body)
    assert by_digest == by_tag
    assert child_manifest.body == child.body
    assert child_manifest.media_type == media.OCI_MANIFEST
    assert media.platforms(by_tag.body) == {
        "linux/amd64": pushed.children["linux/amd64"].digest,
        "linux/arm64/v8": child.digest,
    }
    assert set(media.blobs(child_manifest.body)) == {
        json.loads(child.body)["config"]["digest"],
        json.loads(child.body)["layers"][0]["digest"],
    }


async def test_docker_manifest_list_by_digest_and_schema2_by_tag(registry, repo, pusher):
    listed = pusher.index(repo, "2.0.0", docker=True, seed="dl")
    single = pusher.image(repo, "2.0.1", docker=True, seed="s2")
    async with make_client(registry.settings()) as rc:
        got = await rc.get_manifest(repo, listed.digest)
        head = await rc.head_manifest(repo, "2.0.0")
        schema2 = await rc.get_manifest(repo, "2.0.1")
    assert (got.digest, got.media_type, got.body) == (
        listed.digest,
        media.DOCKER_MANIFEST_LIST,
        listed.index.body,
    )
    assert head.digest == listed.digest and head.media_type == media.DOCKER_MANIFEST_LIST
    assert (schema2.digest, schema2.media_type) == (single.digest, media.DOCKER_MANIFEST)


async def test_media_type_falls_back_to_content_type(registry, repo, pusher):
    layer = pusher.layer(repo, seed="nomt")
    cfg = pusher.config_blob(repo, seed="nomt", layers=[layer])
    body = json.dumps(
        {"schemaVersion": 2, "config": cfg.descriptor(), "layers": [layer.descriptor()]}
    ).encode()
    pusher.manifest(repo, "3.0.0", body, media.OCI_MANIFEST)
    async with make_client(registry.settings()) as rc:
        got = await rc.get_manifest(repo, "3.0.0")
    assert got.media_type == media.OCI_MANIFEST
    assert got.digest == models.sha256_digest(body)


async def test_unknown_tag_and_unknown_repository_are_not_found(registry, repo, pusher):
    pushed = pusher.image(repo, "1.0.0")
    async with make_client(registry.settings()) as rc:
        with pytest.raises(errors.NotFound) as tag_missing:
            await rc.head_manifest(repo, "9.9.9")
        with pytest.raises(errors.NotFound) as get_missing:
            await rc.get_manifest(repo, "9.9.9")
        with pytest.raises(errors.NotFound) as repo_missing:
            await rc.list_tags(repo + "-nothing")
        pusher.delete_manifest(repo, pushed.digest)
        with pytest.raises(errors.NotFound):
            await rc.head_manifest(repo, "1.0.0")
        with pytest.raises(errors.NotFound):
            await rc.head_manifest(repo, pushed.digest)
    assert tag_missing.value.code == "MANIFEST_UNKNOWN"
    assert get_missing.value.code == "MANIFEST_UNKNOWN"
    assert repo_missing.value.code == "NAME_UNKNOWN"
    assert not tag_missing.value.temporary
    assert "9.9.9" in str(tag_missing.value) and registry.host in str(tag_missing.value)


async def test_list_tags_follows_link_pages(registry, repo, pusher, fault_proxy):
    pushed = pusher.image(repo, "0.0.0")
    names = [f"1.{i}.0" for i in range(7)]
    for name in names:
        pusher.tag(repo, name, pushed)
    # distribution 2.8 ignores n/last; the proxy pages the way the spec (and newer registries) do
    fault_proxy.add("GET", r"/tags/list", transform=faultproxy.paginate_tags)
    async with make_client(registry.settings(host=fault_proxy.host)) as rc:
        tags = await rc.list_tags(repo, page_size=3)
    assert tags == sorted([*names, "0.0.0"])
    assert fault_proxy.count("GET", r"/tags/list") == 3
    assert fault_proxy.seen[0].query["n"] == ["3"]
    assert fault_proxy.seen[2].query["last"] == ["1.4.0"]


async def test_list_tags_follows_absolute_links(registry, repo, pusher, fault_proxy):
    pushed = pusher.image(repo, "0.0.0")
    for i in range(4):
        pusher.tag(repo, f"1.{i}.0", pushed)

    def absolute(answer, request):
        return faultproxy.paginate_tags(answer, request, absolute=fault_proxy.url)

    fault_proxy.add("GET", r"/tags/list", transform=absolute)
    async with make_client(registry.settings(host=fault_proxy.host)) as rc:
        assert len(await rc.list_tags(repo, page_size=2)) == 5
    assert fault_proxy.count("GET", r"/tags/list") == 3


async def test_list_tags_of_a_registry_ignoring_n_and_last(registry, repo, pusher):
    # The real distribution 2.8: every page is the whole list, unsorted, and no Link.
    pushed = pusher.image(repo, "0.0.0")
    for i in range(5):
        pusher.tag(repo, f"1.{i}.0", pushed)
    async with make_client(registry.settings()) as rc:
        tags = await rc.list_tags(repo, page_size=2)
    assert sorted(tags) == sorted(["0.0.0", *(f"1.{i}.0" for i in range(5))])


async def test_list_tags_terminates_on_repeated_pages_and_link_loops(
    registry, repo, pusher, fault_proxy
):
    pusher.image(repo, "1.0.0")

    def repeat_with_link(answer, request):
        # the same (duplicated, unsorted) page again and again, with an ever-new next link
        answer.body = json.dumps({"name": repo, "tags": ["b", "a", "b", "1.0.0"]}).encode()
        answer.set_header(
            "Link", f'</v2/{repo}/tags/list?n=2&last=x{len(fault_proxy.seen)}>; rel="next"'
        )
        return answer

    rule = fault_proxy.add("GET", r"/tags/list", transform=repeat_with_link)
    async with make_client(registry.settings(host=fault_proxy.host)) as rc:
        assert await rc.list_tags(repo, page_size=2) == ["b", "a", "1.0.0"]
        assert rule.hits == 2  # the second, repeated page ends it
        fault_proxy.reset()

        def self_link(answer, request):
            answer.set_header("Link", f'<{request.path}>; rel="next"')
            return answer

        fault_proxy.add("GET", r"/tags/list", transform=self_link)
        assert await rc.list_tags(repo) == ["1.0.0"]
        assert fault_proxy.count("GET", r"/tags/list") == 1

        fault_proxy.reset()
        fault_proxy.rewrite_header(
            "GET", r"/tags/list", "Link", '<http://elsewhere.invalid/v2/x/tags/list>; rel="next"'
        )
        with pytest.raises(errors.ProtocolError, match="off this registry"):
            await rc.list_tags(repo)


async def test_list_tags_null_is_empty_and_garbage_is_a_protocol_error(
    registry, repo, pusher, fault_proxy
):
    pusher.image(repo, "1.0.0")
    async with make_client(registry.settings(host=fault_proxy.host)) as rc:
        fault_proxy.fail(
            "GET",
            r"/tags/list",
            200,
            body=json.dumps({"name": repo, "tags": None}),
            headers={"Content-Type": "application/json"},
            times=1,
        )
        assert await rc.list_tags(repo) == []
        fault_proxy.fail("GET", r"/tags/list", 200, body="<html>hello</html>", times=1)
        with pytest.raises(errors.ProtocolError, match="not valid JSON"):
            await rc.list_tags(repo)
        fault_proxy.fail("GET", r"/tags/list", 200, body='{"tags": [1, 2]}', times=1)
        with pytest.raises(errors.ProtocolError, match="list of strings"):
            await rc.list_tags(repo)


async def test_invalid_names_are_refused_before_any_request(registry):
    async with make_client(registry.settings()) as rc:
        with pytest.raises(errors.InvalidReference):
            await rc.head_manifest("Bad/Name", "1.0")
        with pytest.raises(errors.InvalidReference):
            await rc.head_manifest("ok/name", "-bad")
        with pytest.raises(errors.InvalidReference):
            await rc.get_manifest("ok/name", "1.0", expected_digest="sha256:nope")


# --- basic auth ------------------------------------------------------------------------------------


async def test_basic_auth_registry(basic_registry, repo, make_pusher):
    pushed = make_pusher(basic_registry).image(repo, "1.0.0")
    async with make_client(basic_registry.settings()) as rc:
        await rc.ping()
        head = await rc.head_manifest(repo, "1.0.0")
        assert await rc.list_tags(repo) == ["1.0.0"]
    assert head.digest == pushed.digest


async def test_basic_auth_wrong_or_missing_password_is_an_auth_error(basic_registry, repo):
    marker = "s3cret-MARKER-basic"
    wrong = basic_registry.settings(password=config.Secret(marker))
    async with make_client(wrong) as rc:
        with pytest.raises(errors.AuthError) as exc:
            await rc.head_manifest(repo, "1.0.0")
    assert exc.value.status == 401 and not exc.value.temporary
    assert_no_secret(exc.value, marker)
    anonymous = basic_registry.settings(username=None, password=None)
    async with make_client(anonymous) as rc:
        with pytest.raises(errors.AuthError, match="none are configured"):
            await rc.ping()


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = str(exc) + repr(exc) + repr(exc.args)
    for secret in secrets:
        assert secret not in text, text
        assert secret[:12] not in text, text


# --- token auth ------------------------------------------------------------------------------------


def scoped(issuer: support_registry.TokenIssuer, repo: str) -> list[support_registry.TokenRequest]:
    return [r for r in issuer.requests if f"repository:{repo}:pull" in r.scopes]


async def test_token_auth_with_credentials_and_one_token_for_many_requests(
    token_registry, token_issuer, repo, make_pusher
):
    pushed = make_pusher(token_registry).index(repo, "1.0.0")
    async with make_client(token_registry.settings()) as rc:
        heads = await asyncio.gather(*(rc.head_manifest(repo, "1.0.0") for _ in range(20)))
        assert await rc.list_tags(repo) == ["1.0.0"]
        got = await rc.get_manifest(repo, "1.0.0")
    assert {h.digest for h in heads} == {pushed.digest} and got.digest == pushed.digest
    requests = scoped(token_issuer, repo)
    assert len(requests) == 1, requests  # 20 HEADs started together, one token fetch
    assert requests[0].user == token_registry.username
    assert requests[0].service == support_registry.SERVICE


async def test_token_auth_anonymous_flow_is_denied(token_registry, token_issuer, repo, make_pusher):
    make_pusher(token_registry).image(repo, "1.0.0")
    anonymous = token_registry.settings(username=None, password=None)
    async with make_client(anonymous) as rc:
        # the issuer hands anonymous users a token without access: the registry says 401 again
        with pytest.raises(errors.AuthError) as exc:
            await rc.head_manifest(repo, "1.0.0")
        assert exc.value.status == 401 and "anonymous" in str(exc.value)
        assert [r.user for r in scoped(token_issuer, repo)] == [None]
        token_issuer.require_auth = True
        with pytest.raises(errors.AuthError, match=r"token from 127\.0\.0\.1/token"):
            await rc.head_manifest(repo, "1.0.0")
    # a registry that grants anonymous pulls (a public image) works without credentials
    token_issuer.reset()
    token_issuer.grant = lambda user, type_, name, actions: ["pull"]
    async with make_client(anonymous) as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest is not None


async def test_token_service_denial_is_an_auth_error(token_registry, token_issuer, repo):
    token_issuer.deny = True
    async with make_client(token_registry.settings()) as rc:
        with pytest.raises(errors.AuthError) as exc:
            await rc.ping()
    assert exc.value.status == 401 and not exc.value.temporary
    assert_no_secret(exc.value, token_registry.password)


async def test_token_cache_honours_expires_in_and_access_token_field(
    token_registry, token_issuer, repo, make_pusher
):
    make_pusher(token_registry).image(repo, "1.0.0")
    token_issuer.token_field = "access_token"
    token_issuer.expires_in = 60
    now = [1000.0]
    async with make_client(token_registry.settings(), clock=lambda: now[0]) as rc:
        await rc.head_manifest(repo, "1.0.0")
        now[0] += 40
        await rc.head_manifest(repo, "1.0.0")
        assert len(scoped(token_issuer, repo)) == 1
        now[0] += 20  # 60 s: past expiry (and past the early-refresh margin)
        await rc.head_manifest(repo, "1.0.0")
        assert len(scoped(token_issuer, repo)) == 2
        token_issuer.expires_in = None  # default 60 s
        now[0] += 100
        await rc.head_manifest(repo, "1.0.0")
        now[0] += 30
        await rc.head_manifest(repo, "1.0.0")
        assert len(scoped(token_issuer, repo)) == 3


async def test_a_refused_cached_token_is_fetched_again_once(
    token_registry, token_issuer, repo, make_pusher, make_fault_proxy
):
    make_pusher(token_registry).image(repo, "1.0.0")
    proxy = make_fault_proxy(token_registry)
    challenge = (
        f'Bearer realm="{token_issuer.realm}",service="{support_registry.SERVICE}",'
        f'scope="repository:{repo}:pull",error="invalid_token"'
    )
    async with make_client(token_registry.settings(host=proxy.host)) as rc:
        await rc.head_manifest(repo, "1.0.0")
        proxy.fail("HEAD", "/manifests/", 401, headers={"WWW-Authenticate": challenge}, times=1)
        await rc.head_manifest(repo, "1.0.0")
        assert len(scoped(token_issuer, repo)) == 2
        proxy.fail("HEAD", "/manifests/", 401, headers={"WWW-Authenticate": challenge})
        with pytest.raises(errors.AuthError, match="invalid_token"):
            await rc.head_manifest(repo, "1.0.0")
        assert len(scoped(token_issuer, repo)) == 3  # one more try, not a loop


# --- failures through the fault proxy ------------------------------------------------------------


@pytest.fixture
def proxied(registry, repo, pusher, fault_proxy, sleeps):
    """(client factory, pushed image) with the client pointed at the fault proxy."""
    pushed = pusher.image(repo, "1.0.0")

    def make(**kwargs: Any) -> client.RegistryClient:
        overrides = kwargs.pop("settings", {})
        return make_client(registry.settings(host=fault_proxy.host, **overrides), sleeps, **kwargs)

    return make, pushed


async def test_401_without_challenge_and_403_are_auth_errors(proxied, repo, fault_proxy, sleeps):
    make, _ = proxied
    async with make() as rc:
        fault_proxy.fail("HEAD", "/manifests/", 401, body="go away", times=1)
        with pytest.raises(errors.AuthError, match="without a Bearer or Basic challenge"):
            await rc.head_manifest(repo, "1.0.0")
        fault_proxy.fail(None, "/manifests/", 403, body="forbidden by policy", times=1)
        with pytest.raises(errors.AuthError) as exc:
            await rc.get_manifest(repo, "1.0.0")
    assert exc.value.status == 403 and "forbidden by policy" in str(exc.value)
    assert sleeps == []  # never retried


async def test_429_retry_after_seconds_is_honoured(proxied, repo, fault_proxy, sleeps):
    make, pushed = proxied
    fault_proxy.fail("HEAD", "/manifests/", 429, headers={"Retry-After": "1"}, times=2)
    async with make() as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest == pushed.digest
    assert sleeps == [1.0, 1.0]


async def test_429_retry_after_http_date_is_honoured(proxied, repo, fault_proxy, sleeps):
    make, pushed = proxied
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    fault_proxy.fail("HEAD", "/manifests/", 429, headers={"Retry-After": when}, times=1)
    async with make() as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest == pushed.digest
    assert len(sleeps) == 1 and 1.0 < sleeps[0] <= 3.5


async def test_429_longer_than_the_cap_gives_up_with_retry_after(
    proxied, repo, fault_proxy, sleeps
):
    make, _ = proxied
    fault_proxy.fail("HEAD", "/manifests/", 429, headers={"Retry-After": "120"})
    async with make() as rc:
        with pytest.raises(errors.RateLimited) as exc:
            await rc.head_manifest(repo, "1.0.0")
    assert exc.value.retry_after == 120.0 and exc.value.temporary
    assert sleeps == [] and fault_proxy.count("HEAD") == 1
    fault_proxy.reset()
    fault_proxy.fail("HEAD", "/manifests/", 429)  # no Retry-After: the backoff, then give up
    async with make() as rc:
        with pytest.raises(errors.RateLimited) as exc:
            await rc.head_manifest(repo, "1.0.0")
    assert exc.value.retry_after is None
    assert sleeps == [0.2, 0.4] and fault_proxy.count("HEAD") == 3


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retried_then_succeeds(proxied, repo, fault_proxy, sleeps, status):
    make, pushed = proxied
    fault_proxy.fail(None, "/manifests/", status, body="<html>oops</html>", times=2)
    async with make() as rc:
        got = await rc.get_manifest(repo, "1.0.0")
    assert got.digest == pushed.digest
    assert sleeps == [0.2, 0.4]


async def test_5xx_forever_is_registry_unavailable(proxied, repo, fault_proxy, sleeps):
    make, _ = proxied
    fault_proxy.fail(None, "/manifests/", 503, body="maintenance", headers={"Retry-After": "2"})
    observer = Observer()
    async with make(observer=observer) as rc:
        with pytest.raises(errors.RegistryUnavailable) as exc:
            await rc.head_manifest(repo, "1.0.0")
    assert exc.value.temporary and exc.value.status == 503
    assert not isinstance(exc.value, errors.NotFound)
    assert sleeps == [2.0, 2.0] and fault_proxy.count("HEAD") == 3
    assert [code for _, method, code in observer.requests] == ["503"] * 3


async def test_plain_text_404_is_never_not_found(proxied, repo, fault_proxy, sleeps):
    make, pushed = proxied
    async with make() as rc:
        fault_proxy.fail(None, "/manifests/", 404, body="404 page not found")
        with pytest.raises(errors.RegistryError) as exc:
            await rc.head_manifest(repo, "1.0.0")
        assert not isinstance(exc.value, errors.NotFound)
        assert isinstance(exc.value, errors.RegistryUnavailable)
        with pytest.raises(errors.RegistryUnavailable):
            await rc.get_manifest(repo, "1.0.0")
        fault_proxy.reset()
        # a bare 404 on the HEAD only: the confirming GET finds the manifest after all
        fault_proxy.fail("HEAD", "/manifests/", 404)
        head = await rc.head_manifest(repo, "1.0.0")
        assert head.digest == pushed.digest
        fault_proxy.reset()
        fault_proxy.fail(
            None,
            "/manifests/",
            404,
            body='{"errors":[{"code":"UNSUPPORTED","message":"?"}]}',
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(errors.ProtocolError, match="UNSUPPORTED"):
            await rc.head_manifest(repo, "1.0.0")


async def test_registry_stopped_mid_run_is_unavailable_then_back(own_registry, sleeps):
    with images.Pusher(own_registry.url) as pusher:
        pushed = pusher.index("team/app", "1.0.0")
    observer = Observer()
    async with make_client(own_registry.settings(), sleeps, observer=observer) as rc:
        assert (await rc.head_manifest("team/app", "1.0.0")).digest == pushed.digest
        own_registry.stop()
        observer.requests.clear()
        with pytest.raises(errors.RegistryUnavailable) as exc:
            await rc.head_manifest("team/app", "1.0.0")
        assert not isinstance(exc.value, errors.NotFound)
        with pytest.raises(errors.RegistryUnavailable):
            await rc.list_tags("team/app")
        with pytest.raises(errors.RegistryUnavailable):
            await rc.get_manifest("team/app", "1.0.0")
        assert exc.value.temporary and own_registry.host in str(exc.value)
        assert {code for _, _, code in observer.requests} <= {
            "connect_error",
            "network_error",
            "protocol_error",
        }
        assert len(sleeps) == 6  # each call: 3 attempts, 2 backoffs
        # back on the same port with the same storage: the same client sees the same digest
        own_registry.start()
        assert (await rc.head_manifest("team/app", "1.0.0")).digest == pushed.digest
        assert await rc.list_tags("team/app") == ["1.0.0"]


async def test_dropped_connections_and_timeouts_are_temporary(proxied, repo, fault_proxy, sleeps):
    make, pushed = proxied
    fault_proxy.add("HEAD", "/manifests/", drop=True, times=2)
    async with make() as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest == pushed.digest
    assert len(sleeps) == 2
    fault_proxy.reset()
    fault_proxy.add("HEAD", "/manifests/", delay=1.0)
    observer = Observer()
    async with make(settings={"timeout": 0.1}, observer=observer) as rc:
        with pytest.raises(errors.RegistryUnavailable, match="timed out"):
            await rc.head_manifest(repo, "1.0.0")
    assert [code for _, _, code in observer.requests] == ["timeout"] * 3
    # a registry that dribbles a byte now and then never trips the read timeout: the deadline
    fault_proxy.reset()
    fault_proxy.stream("GET", "/manifests/", chunk=1, interval=0.05)
    once = dataclasses.replace(client.DEFAULT_RETRY, attempts=1)
    async with make(settings={"timeout": 0.2}, retry=once) as rc:
        started = time.monotonic()
        with pytest.raises(errors.RegistryUnavailable, match="no complete answer in 1s"):
            await rc.get_manifest(repo, "1.0.0")
    assert time.monotonic() - started < 3


async def test_digest_header_lies_are_protocol_errors(proxied, repo, fault_proxy):
    make, pushed = proxied
    liar = "sha256:" + "0" * 64
    async with make() as rc:
        fault_proxy.rewrite_header("GET", "/manifests/", "Docker-Content-Digest", liar, times=1)
        with pytest.raises(errors.ProtocolError, match="Docker-Content-Digest") as exc:
            await rc.get_manifest(repo, "1.0.0")
        assert liar in str(exc.value) and pushed.digest in str(exc.value)
        fault_proxy.rewrite_header("HEAD", "/manifests/", "Docker-Content-Digest", liar, times=1)
        with pytest.raises(errors.ProtocolError):
            await rc.head_manifest(repo, pushed.digest)
        fault_proxy.rewrite_header(
            "HEAD", "/manifests/", "Docker-Content-Digest", "md5:abc", times=1
        )
        with pytest.raises(errors.ProtocolError, match="not a sha256 digest"):
            await rc.head_manifest(repo, "1.0.0")
        # no header at all: HEAD cannot tell, GET does not need it
        fault_proxy.rewrite_header(None, "/manifests/", "Docker-Content-Digest", None, times=2)
        assert (await rc.head_manifest(repo, "1.0.0")).digest is None
        assert (await rc.get_manifest(repo, "1.0.0")).digest == pushed.digest

        def tamper(answer, request):
            answer.body = answer.body.replace(b'"schemaVersion":2', b'"schemaVersion": 2')
            answer.set_header("Docker-Content-Digest", models.sha256_digest(answer.body))
            return answer

        fault_proxy.add("GET", "/manifests/", transform=tamper)
        with pytest.raises(errors.ProtocolError, match="expected"):
            await rc.get_manifest(repo, "1.0.0", expected_digest=pushed.digest)
        with pytest.raises(errors.ProtocolError, match="expected"):
            await rc.get_manifest(repo, pushed.digest)


async def test_oversized_and_malformed_manifests_are_refused(proxied, repo, fault_proxy):
    make, _ = proxied
    huge = b"{" + b" " * media.MAX_MANIFEST_BYTES + b"}"
    async with make() as rc:
        fault_proxy.fail("GET", "/manifests/", 200, body=huge, times=1)
        with pytest.raises(errors.ProtocolError, match="limit"):
            await rc.get_manifest(repo, "1.0.0")

        def stream_without_length(handler):
            handler.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            )
            for _ in range(5):
                handler.wfile.write(b" " * (1024 * 1024))
            handler.close_connection = True

        fault_proxy.add("GET", "/manifests/", action=stream_without_length, times=1)
        with pytest.raises(errors.ProtocolError, match="limit"):
            await rc.get_manifest(repo, "1.0.0")
        fault_proxy.fail("GET", "/manifests/", 200, body="[1, 2]", times=1)
        with pytest.raises(errors.ProtocolError, match="not a JSON object"):
            await rc.get_manifest(repo, "1.0.0")
        fault_proxy.fail("GET", "/manifests/", 200, body="<html>", times=1)
        with pytest.raises(errors.ProtocolError, match="not valid JSON"):
            await rc.get_manifest(repo, "1.0.0")


async def test_observer_sees_requests_and_rate_limit_remaining(proxied, repo, fault_proxy):
    make, _ = proxied
    fault_proxy.rewrite_header("HEAD", "/manifests/", "RateLimit-Remaining", "100;w=21600")
    observer = Observer()
    async with make(observer=observer) as rc:
        await rc.head_manifest(repo, "1.0.0")
        await rc.list_tags(repo)
    assert observer.requests == [
        (fault_proxy.host, "HEAD", "200"),
        (fault_proxy.host, "GET", "200"),
    ]
    assert observer.ratelimits == [(fault_proxy.host, 100.0)]


# --- credentials from docker config and helpers ----------------------------------------------------


def write_docker_config(directory: Path, doc: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(doc))
    return directory


def write_helper(bindir: Path, name: str, script: str) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def docker_config_settings(server: support_registry.RegistryServer) -> config.RegistrySettings:
    return server.settings(username=None, password=None, use_docker_config=True)


async def test_docker_config_auths(basic_registry, repo, tmp_path, make_pusher):
    make_pusher(basic_registry).image(repo, "1.0.0")
    user, password = basic_registry.username, basic_registry.password
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    for key, entry in [
        (basic_registry.host, {"auth": encoded}),
        (f"http://{basic_registry.host}/v2/", {"username": user, "password": password}),
    ]:
        cfg = write_docker_config(tmp_path / key.replace("/", "_"), {"auths": {key: entry}})
        env = {"DOCKER_CONFIG": str(cfg), "PATH": os.environ.get("PATH", "")}
        async with make_client(docker_config_settings(basic_registry), env=env) as rc:
            assert (await rc.head_manifest(repo, "1.0.0")).digest is not None


async def test_credential_helpers_run_without_a_shell(
    basic_registry, repo, tmp_path, monkeypatch, make_pusher
):
    make_pusher(basic_registry).image(repo, "1.0.0")
    bindir = tmp_path / "bin"
    asked = tmp_path / "asked"
    write_helper(
        bindir,
        "test",
        f'read -r server\necho "$1 $server" >> {asked}\n'
        f'printf \'{{"ServerURL":"%s","Username":"{basic_registry.username}",'
        f'"Secret":"{basic_registry.password}"}}\' "$server"\n',
    )
    write_helper(bindir, "empty", 'echo "credentials not found in native keychain"; exit 1\n')
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for doc in (
        {"credHelpers": {basic_registry.host: "test"}, "credsStore": "empty"},
        {"credsStore": "test", "auths": {basic_registry.host: {}}},
    ):
        monkeypatch.setenv("DOCKER_CONFIG", str(write_docker_config(tmp_path / "cfg", doc)))
        async with make_client(docker_config_settings(basic_registry)) as rc:
            await rc.ping()
            assert (await rc.head_manifest(repo, "1.0.0")).digest is not None
    assert asked.read_text().splitlines() == [f"get {basic_registry.host}"] * 2

    monkeypatch.setenv(
        "DOCKER_CONFIG", str(write_docker_config(tmp_path / "cfg", {"credsStore": "empty"}))
    )
    async with make_client(docker_config_settings(basic_registry)) as rc:
        with pytest.raises(errors.AuthError, match="none are configured"):
            await rc.ping()
    monkeypatch.setenv(
        "DOCKER_CONFIG", str(write_docker_config(tmp_path / "cfg", {"credsStore": "missing"}))
    )
    async with make_client(docker_config_settings(basic_registry)) as rc:
        with pytest.raises(errors.AuthError, match="docker-credential-missing is not on PATH"):
            await rc.ping()


def test_docker_hub_config_key_and_identity_tokens(tmp_path):
    hub = config.RegistrySettings(host="docker.io")
    cfg = write_docker_config(
        tmp_path / "hub",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": base64.b64encode(b"me:pw").decode()},
                "ghcr.io": {"identitytoken": "refresh-me"},
            }
        },
    )
    creds = credentials.resolve_credentials(hub, env={"DOCKER_CONFIG": str(cfg)})
    assert creds is not None and creds.username == "me" and creds.password == config.Secret("pw")
    assert "pw" not in repr(creds)
    ghcr = credentials.resolve_credentials(
        config.RegistrySettings(host="ghcr.io"), env={"DOCKER_CONFIG": str(cfg)}
    )
    assert ghcr is not None and ghcr.identity_token == config.Secret("refresh-me")
    explicit = config.RegistrySettings(host="ghcr.io", username="u", password=config.Secret("p"))
    assert (
        credentials.resolve_credentials(explicit, env={"DOCKER_CONFIG": str(cfg)}).username == "u"
    )
    assert credentials.resolve_credentials(hub, env={"HOME": str(tmp_path / "nohome")}) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{nope")
    with pytest.raises(errors.AuthError, match="cannot read docker config"):
        credentials.resolve_credentials(hub, env={"DOCKER_CONFIG": str(tmp_path / "bad")})


def test_credential_helper_for_docker_hub_gets_the_hub_url(tmp_path):
    bindir = tmp_path / "bin"
    write_helper(
        bindir,
        "hub",
        'read -r server\nprintf \'{"Username":"<token>","Secret":"%s-token"}\' "$server"\n',
    )
    write_helper(bindir, "slow", "exec /bin/sleep 5\n")
    cfg = write_docker_config(tmp_path / "c", {"credHelpers": {"docker.io": "hub"}})
    env = {"DOCKER_CONFIG": str(cfg), "PATH": str(bindir)}
    creds = credentials.resolve_credentials(config.RegistrySettings(host="docker.io"), env=env)
    assert creds is not None and creds.username is None
    assert creds.identity_token == config.Secret("https://index.docker.io/v1/-token")
    with pytest.raises(errors.AuthError, match="timed out"):
        credentials.run_credential_helper("slow", "docker.io", env, timeout=0.2)


# --- secrets never leak into errors ----------------------------------------------------------------


def echo_authorization(status: int):
    def action(handler) -> None:
        body = f"you sent: {handler.headers.get('Authorization')}".encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return action


async def test_secrets_never_appear_in_errors(
    basic_registry, token_registry, token_issuer, repo, make_fault_proxy, sleeps
):
    marker = "MARKER-pw-0123456789"
    failures: list[BaseException] = []
    # a wrong password
    async with make_client(basic_registry.settings(password=config.Secret(marker))) as rc:
        with pytest.raises(errors.AuthError) as exc:
            await rc.list_tags(repo)
        failures.append(exc.value)
    # a server that echoes the Authorization header back (basic, then bearer)
    for server in (basic_registry, token_registry):
        proxy = make_fault_proxy(server)
        secrets = [server.password]
        async with make_client(server.settings(host=proxy.host), sleeps) as rc:
            await rc.ping()
            for status in (500, 403, 400):
                proxy.reset()
                proxy.add(None, "/manifests/", action=echo_authorization(status))
                with pytest.raises(errors.RegistryError) as exc:
                    await rc.head_manifest(repo, "1.0.0")
                failures.append(exc.value)
                with pytest.raises(errors.RegistryError) as exc:
                    await rc.get_manifest(repo, "1.0.0")
                assert "you sent" in str(exc.value)
                failures.append(exc.value)
            secrets.extend(rc._wire.secrets)
        for failure in failures:
            assert_no_secret(failure, marker, *secrets)
            assert "Basic " + base64.b64encode(b"x").decode()[:2] not in str(failure)
            assert "eyJ" not in str(failure)


async def test_identity_token_from_docker_config_uses_the_refresh_grant(
    token_registry, token_issuer, repo, tmp_path, make_pusher
):
    make_pusher(token_registry).image(repo, "1.0.0")
    token_issuer.require_auth = True
    token_issuer.refresh_tokens["refresh-MARKER-42"] = "robot"
    cfg = write_docker_config(
        tmp_path, {"auths": {token_registry.host: {"identitytoken": "refresh-MARKER-42"}}}
    )
    env = {"DOCKER_CONFIG": str(cfg)}
    async with make_client(docker_config_settings(token_registry), env=env) as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest is not None
    assert [(r.method, r.user) for r in scoped(token_issuer, repo)] == [("POST", "robot")]
    token_issuer.refresh_tokens.clear()
    async with make_client(docker_config_settings(token_registry), env=env) as rc:
        with pytest.raises(errors.AuthError) as exc:
            await rc.head_manifest(repo, "1.0.0")
    assert_no_secret(exc.value, "refresh-MARKER-42")


# --- pure parsing (table tests) ------------------------------------------------------------------

REALM = "https://auth.example.com/token"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            f'Bearer realm="{REALM}",service="registry.example.com",scope="repository:a/b:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": REALM,
                        "service": "registry.example.com",
                        "scope": "repository:a/b:pull",
                    },
                )
            ],
        ),
        (
            # commas and spaces inside quotes; several scopes; odd spacing and case
            f'BEARER  realm = "{REALM}" , scope="repository:a:pull,push repository:b:pull"',
            [("bearer", {"realm": REALM, "scope": "repository:a:pull,push repository:b:pull"})],
        ),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        ("Basic", [("basic", {})]),
        (
            'Bearer realm="r",error="insufficient_scope", Basic realm="x, y"',
            [
                ("bearer", {"realm": "r", "error": "insufficient_scope"}),
                ("basic", {"realm": "x, y"}),
            ],
        ),
        (r'Bearer realm="a\"b"', [("bearer", {"realm": 'a"b'})]),
        (f"Bearer realm={REALM},service=svc", [("bearer", {"realm": REALM, "service": "svc"})]),
        ('Bearer realm="unterminated', [("bearer", {"realm": "unterminated"})]),
        ("", []),
        (" , ,", []),
    ],
)
def test_parse_challenges(header, expected):
    got = [(c.scheme, dict(c.params)) for c in challenges.parse(header)]
    assert got == expected


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        (['Basic realm="x"', f'Bearer realm="{REALM}"'], "bearer"),
        (['Bearer service="no realm"', 'Basic realm="x"'], "basic"),
        (["Negotiate abc=="], None),
        ([], None),
    ],
)
def test_pick_challenge_prefers_bearer_with_a_realm(headers, scheme):
    picked = challenges.pick(challenges.parse(headers))
    assert (picked.scheme if picked else None) == scheme


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['</v2/a/tags/list?n=2&last=b>; rel="next"'], "/v2/a/tags/list?n=2&last=b"),
        (
            ["<https://r.example/v2/a/tags/list?last=b>;rel=next"],
            "https://r.example/v2/a/tags/list?last=b",
        ),
        (['<http://x/prev>; rel="prev", <http://x/next>; rel="next"'], "http://x/next"),
        (['<http://x/1>; rel="prev"'], None),
        ([], None),
    ],
)
def test_parse_link_next(values, expected):
    assert client.parse_link_next(values) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100;w=21600", 100.0), ("0", 0.0), ("7, 3", 7.0), ("", None), ("x;w=1", None), (None, None)],
)
def test_parse_ratelimit_remaining(value, expected):
    assert transport.parse_ratelimit_remaining(value) == expected


def test_token_cache_refreshes_a_little_early():
    now = [0.0]
    cache = auth.TokenCache(clock=lambda: now[0])
    key = auth.TokenKey("realm", "svc", "repository:a:pull", "me")
    other = auth.TokenKey("realm", "svc", "repository:a:pull", "someone-else")
    cache.put(key, "t1", 300)
    assert cache.get(key) == "t1" and cache.get(other) is None
    now[0] = 269.0
    assert cache.get(key) == "t1"
    now[0] = 271.0  # 300 s less a 30 s margin
    assert cache.get(key) is None
    cache.put(key, "t2", None)  # no expires_in: 60 s less 12
    now[0] += 47
    assert cache.get(key) == "t2"
    now[0] += 2
    assert cache.get(key) is None


async def test_concurrency_is_bounded_per_registry(proxied, repo, fault_proxy):
    make, pushed = proxied
    fault_proxy.add("HEAD", "/manifests/", delay=0.05)
    async with make(settings={"max_concurrency": 3}) as rc:
        heads = await asyncio.gather(*(rc.head_manifest(repo, "1.0.0") for _ in range(12)))
    assert {h.digest for h in heads} == {pushed.digest}
    assert fault_proxy.max_in_flight == 3
    async with make(settings={"max_concurrency": 8}) as rc:
        await asyncio.gather(*(rc.head_manifest(repo, "1.0.0") for _ in range(8)))
        assert len(rc._wire.pools) == 2  # several small pools, not one big one


def test_pools_are_made_inside_the_running_loop(registry, repo, pusher):
    pushed = pusher.image(repo, "1.0.0")
    rc = client.RegistryClient(registry.settings())  # no loop running: nothing is made yet
    assert rc._wire.pools == []

    async def use() -> str | None:
        async with rc:
            return (await rc.head_manifest(repo, "1.0.0")).digest

    assert asyncio.run(use()) == pushed.digest
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(rc.head_manifest(repo, "1.0.0"))


async def test_docker_config_path_is_explicit(basic_registry, repo, tmp_path, make_pusher):
    make_pusher(basic_registry).image(repo, "1.0.0")
    encoded = base64.b64encode(
        f"{basic_registry.username}:{basic_registry.password}".encode()
    ).decode()
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({"auths": {basic_registry.host: {"auth": encoded}}}))
    env = {"HOME": str(tmp_path / "nohome"), "PATH": os.environ.get("PATH", "")}
    settings = docker_config_settings(basic_registry)
    async with make_client(settings, env=env, docker_config_path=path) as rc:
        assert (await rc.head_manifest(repo, "1.0.0")).digest is not None
    async with make_client(settings, env=env) as rc:  # without it: anonymous, refused
        with pytest.raises(errors.AuthError, match="none are configured"):
            await rc.head_manifest(repo, "1.0.0")
