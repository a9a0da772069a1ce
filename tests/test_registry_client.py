"""RegistryClient against a real docker-registry (and a fault proxy in front of it)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import faultproxy
from watchdog import config, errors, models
from watchdog.registry import client, media

pytestmark = pytest.mark.registry

FAST = client.RetryPolicy(attempts=3, base=0.2, factor=2.0, cap=5.0)


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
