"""resolve_digest (HEAD, then a verified GET when needed) against a real docker-registry, with a
fault proxy in front of it for the answers a good registry never gives."""

from __future__ import annotations

import dataclasses

import pytest

from watchdog import errors
from watchdog.registry import client, resolve

pytestmark = pytest.mark.registry

FAST = dataclasses.replace(client.DEFAULT_RETRY, attempts=2, base=0.0)
OTHER = "sha256:" + "0" * 64


async def _no_sleep(_: float) -> None:
    return None


@pytest.fixture
def proxied(registry, repo, pusher, fault_proxy):
    """(client pointed at the fault proxy, the pushed image) for ``repo:1.0.0``."""
    pushed = pusher.image(repo, "1.0.0")
    rc = client.RegistryClient(
        registry.settings(host=fault_proxy.host), sleep=_no_sleep, retry=FAST
    )
    return rc, pushed


async def test_a_head_digest_stands_without_a_get(proxied, repo, fault_proxy):
    rc, pushed = proxied
    async with rc:
        got = await resolve.resolve_digest(rc, repo, "1.0.0")
        trusted = await resolve.resolve_digest(rc, repo, "1.0.0", verify=True, known=pushed.digest)
    for answer in (got, trusted):
        assert answer.digest == pushed.digest and answer.manifest is None
        assert answer.head.digest == pushed.digest and answer.media_type == pushed.media_type
    assert fault_proxy.count("HEAD", "/manifests/") == 2
    assert fault_proxy.count("GET", "/manifests/") == 0


async def test_verify_gets_the_manifest_when_the_digest_is_not_known(proxied, repo, fault_proxy):
    rc, pushed = proxied
    async with rc:
        for known in (None, OTHER):
            answer = await resolve.resolve_digest(rc, repo, "1.0.0", verify=True, known=known)
            assert answer.manifest is not None and answer.manifest.body == pushed.body
            assert answer.digest == pushed.digest == answer.head.digest
    assert fault_proxy.count("GET", "/manifests/") == 2


async def test_a_head_without_a_digest_is_settled_by_a_verified_get(proxied, repo, fault_proxy):
    rc, pushed = proxied
    fault_proxy.rewrite_header("HEAD", "/manifests/", "Docker-Content-Digest", None)
    async with rc:
        answer = await resolve.resolve_digest(rc, repo, "1.0.0")
        assert answer.head.digest is None
        assert answer.digest == pushed.digest and answer.manifest is not None
        # the GET's own check still applies: bytes that are not the digest reference are refused
        fault_proxy.lie_digest("GET", "/manifests/", times=1)
        with pytest.raises(errors.ProtocolError, match="Docker-Content-Digest"):
            await resolve.resolve_digest(rc, repo, "1.0.0")


async def test_head_and_get_must_agree(proxied, repo, fault_proxy):
    rc, pushed = proxied
    fault_proxy.rewrite_header("HEAD", "/manifests/", "Docker-Content-Digest", OTHER)
    async with rc:
        with pytest.raises(errors.ProtocolError, match="contradicts itself") as caught:
            await resolve.resolve_digest(rc, repo, "1.0.0", verify=True)
    assert OTHER in str(caught.value) and pushed.digest in str(caught.value)


async def test_only_the_heads_definitive_404_is_not_found(proxied, repo, fault_proxy):
    rc, _ = proxied
    async with rc:
        with pytest.raises(errors.NotFound):
            await resolve.resolve_digest(rc, repo, "9.9.9")
        # HEAD 200 without a digest, then the GET finds nothing: a race or a confused
        # registry, never "it does not exist" (guard would answer "go ahead" on NotFound)
        fault_proxy.rewrite_header("HEAD", "/manifests/", "Docker-Content-Digest", None, times=1)
        fault_proxy.fail(
            "GET",
            "/manifests/",
            404,
            body='{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone"}]}',
            headers={"Content-Type": "application/json"},
            times=1,
        )
        with pytest.raises(errors.ProtocolError, match="vanished between HEAD and GET") as caught:
            await resolve.resolve_digest(rc, repo, "1.0.0")
    assert not isinstance(caught.value, errors.NotFound) and caught.value.temporary
