"""The registry client's write side (put_manifest) and existence checks (head_blob,
manifest_exists), against the real docker-registry: open, htpasswd and token variants."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from tests.support import registry as support_registry
from watchdog import config, errors, models
from watchdog.registry import client, media

FAST = dataclasses.replace(client.DEFAULT_RETRY, attempts=2, base=0.0)


async def _no_sleep(seconds: float) -> None:
    return None


def make_client(settings: config.RegistrySettings) -> client.RegistryClient:
    return client.RegistryClient(settings, sleep=_no_sleep, retry=FAST)


def delete_blob(server: support_registry.RegistryServer, repository: str, digest: str) -> None:
    """``DELETE /v2/<name>/blobs/<digest>`` (the test registries enable storage.delete)."""
    resp = httpx.delete(
        f"{server.url}/v2/{repository}/blobs/{digest}", headers=server.push_auth(repository)
    )
    assert resp.status_code == 202, resp.text


async def test_put_manifest_tags_the_exact_bytes(registry, repo, pusher):
    image = pusher.image(repo, None, seed="release")
    async with make_client(registry.settings()) as rc:
        digest = await rc.put_manifest(repo, "0.15.0", image.body, image.media_type)
        assert digest == image.digest
        served = await rc.get_manifest(repo, "0.15.0")
    assert served.body == image.body and served.media_type == media.OCI_MANIFEST


async def test_put_manifest_refuses_a_digest_reference_its_bytes_do_not_hash_to(
    registry, repo, pusher
):
    image = pusher.image(repo, None, seed="a")
    async with make_client(registry.settings()) as rc:
        with pytest.raises(errors.InvalidReference):
            await rc.put_manifest(repo, "sha256:" + "0" * 64, image.body, image.media_type)


async def test_put_manifest_with_missing_blobs_is_a_protocol_error_naming_the_code(
    registry, repo, pusher
):
    image = pusher.image(repo, None, seed="b")
    doc = media.parse_manifest(image.body)
    delete_blob(registry, repo, doc["layers"][0]["digest"])
    async with make_client(registry.settings()) as rc:
        with pytest.raises(errors.ProtocolError, match="BLOB_UNKNOWN"):
            await rc.put_manifest(repo, "1.0.0", image.body, image.media_type)


async def test_head_blob_and_manifest_exists(registry, repo, pusher):
    image = pusher.image(repo, "1.0.0", seed="c")
    config_digest = media.blobs(image.body)[0]
    async with make_client(registry.settings()) as rc:
        assert await rc.head_blob(repo, config_digest) is True
        assert await rc.manifest_exists(repo, image.digest) is True
        delete_blob(registry, repo, config_digest)
        assert await rc.head_blob(repo, config_digest) is False
        pusher.delete_manifest(repo, image.digest)
        assert await rc.manifest_exists(repo, image.digest) is False
        missing = models.sha256_digest(b"never pushed")
        assert await rc.head_blob("t/never-pushed-anything", missing) is False


async def test_head_blob_plain_404_and_5xx_are_errors_not_answers(
    registry, repo, pusher, make_fault_proxy
):
    image = pusher.image(repo, "1.0.0", seed="d")
    blob = media.blobs(image.body)[0]
    proxy = make_fault_proxy(registry)
    async with make_client(registry.settings(host=proxy.host)) as rc:
        proxy.fail(None, f"/v2/{repo}/blobs/", 404, body=b"not found")
        with pytest.raises(errors.RegistryUnavailable):
            await rc.head_blob(repo, blob)
        proxy.reset()
        proxy.fail(None, f"/v2/{repo}/blobs/", 503)
        with pytest.raises(errors.RegistryUnavailable):
            await rc.head_blob(repo, blob)


async def test_put_over_basic_auth_uses_the_push_credentials(basic_registry, repo, make_pusher):
    image = make_pusher(basic_registry).image(repo, None, seed="e")
    # pull credentials wrong, push credentials right: the PUT works, a pull is refused
    settings = basic_registry.settings(
        password=config.Secret("wrong-pull-password"),
        push_username=basic_registry.username,
        push_password=config.Secret(basic_registry.password or ""),
    )
    async with make_client(settings) as rc:
        assert await rc.put_manifest(repo, "2.0.0", image.body, image.media_type) == image.digest
        with pytest.raises(errors.AuthError):
            await rc.head_manifest(repo, "2.0.0")
    async with make_client(basic_registry.settings()) as rc:
        assert (await rc.head_manifest(repo, "2.0.0")).digest == image.digest


async def test_put_over_token_auth_asks_for_a_push_scope(
    token_registry, token_issuer, repo, make_pusher
):
    pushed = make_pusher(token_registry).index(repo, None, seed="f")
    async with make_client(token_registry.settings()) as rc:
        digest = await rc.put_manifest(repo, "3.0.0", pushed.index.body, pushed.index.media_type)
        assert digest == pushed.digest
        assert (await rc.head_manifest(repo, "3.0.0")).digest == pushed.digest
    scopes = [s for r in token_issuer.requests for s in r.scopes]
    assert f"repository:{repo}:pull,push" in scopes


async def test_put_over_token_auth_without_push_rights_is_an_auth_error(
    token_registry, token_issuer, repo, make_pusher
):
    image = make_pusher(token_registry).image(repo, None, seed="g")
    token_issuer.grant = lambda user, type_, name, actions: ["pull"]
    async with make_client(token_registry.settings()) as rc:
        with pytest.raises(errors.AuthError):
            await rc.put_manifest(repo, "4.0.0", image.body, image.media_type)


async def test_head_blob_takes_a_redirect_as_present_without_following_it(
    registry, repo, pusher, make_fault_proxy
):
    image = pusher.image(repo, "1.0.0", seed="h")
    blob = media.blobs(image.body)[0]
    proxy = make_fault_proxy(registry)
    # object storage behind a registry: a URL signed for GET, where a HEAD would be refused
    proxy.fail(
        "HEAD",
        f"/v2/{repo}/blobs/",
        307,
        headers={"Location": "http://127.0.0.1:9/signed-for-get-only"},
    )
    async with make_client(registry.settings(host=proxy.host)) as rc:
        assert await rc.head_blob(repo, blob) is True
