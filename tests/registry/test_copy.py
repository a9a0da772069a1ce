"""Copying a release between repositories (the vault's copy, restore's way back), against the
real docker-registry: a mount on one registry (one request per blob), streaming across two."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from tests.support import images
from watchdog import config, errors
from watchdog.registry import client, copy, media, uploads

FAST = dataclasses.replace(client.DEFAULT_RETRY, attempts=2, base=0.0)


async def _no_sleep(seconds: float) -> None:
    return None


class Recorder:
    """A RequestObserver that keeps (method, code) of every exchange."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def on_request(self, registry: str, method: str, code: str, seconds: float) -> None:
        self.requests.append((method, code))

    def on_ratelimit(self, registry: str, remaining: float) -> None:
        return None


def make_client(
    settings: config.RegistrySettings, observer: Recorder | None = None
) -> client.RegistryClient:
    return client.RegistryClient(settings, sleep=_no_sleep, retry=FAST, observer=observer)


def blobs_of(pushed: images.PushedIndex) -> list[str]:
    return list(dict.fromkeys(b for c in pushed.children.values() for b in media.blobs(c.body)))


async def assert_pullable(
    rc: client.RegistryClient, repository: str, tag: str, pushed: images.PushedIndex
) -> None:
    """Every manifest and blob of ``pushed`` is in ``repository``, byte for byte."""
    top = await rc.get_manifest(repository, tag)
    assert top.body == pushed.index.body
    for child in pushed.children.values():
        got = await rc.get_manifest(repository, child.digest)
        assert got.body == child.body
        for blob in media.blobs(child.body):
            await rc.get_blob(repository, blob)  # verified against its digest


async def test_same_registry_mounts_each_blob_with_one_request(registry, repo, pusher):
    pushed = pusher.index(repo, "0.15.0", seed="mount")
    vault = f"vault/{repo}"
    recorder = Recorder()
    async with make_client(registry.settings(), recorder) as rc:
        report = await copy.copy_release(rc, repo, rc, vault, pushed.digest, "0.15.0--x")
        posts = [r for r in recorder.requests if r[0] == "POST"]
        assert posts == [("POST", "201")] * len(blobs_of(pushed))
        assert not [r for r in recorder.requests if r[0] == "PATCH"]
        assert (report.mounted, report.streamed, report.manifests) == (
            len(blobs_of(pushed)),
            0,
            len(pushed.children) + 1,
        )
        await assert_pullable(rc, vault, "0.15.0--x", pushed)


async def test_across_registries_the_blobs_are_streamed_in_chunks_and_verified(
    registry, repo, pusher, server
):
    pushed = pusher.index(repo, "1.0.0", seed="stream")
    async with (
        make_client(registry.settings()) as src,
        make_client(server.settings()) as dst,
    ):
        # 100-byte chunks: every layer (256 bytes) takes several PATCHes and a short last one
        report = await copy.copy_release(
            src, repo, dst, "vault/x", pushed.digest, "1.0.0--x", chunk=100
        )
        assert report.streamed == len(blobs_of(pushed)) and report.mounted == 0
        await assert_pullable(dst, "vault/x", "1.0.0--x", pushed)
        # a second copy moves nothing: every blob is already there
        again = await copy.copy_release(src, repo, dst, "vault/x", pushed.digest, "1.0.0--x")
        assert again.present == len(blobs_of(pushed)) and again.bytes_streamed == 0


async def test_a_blob_of_an_exact_multiple_of_the_chunk_size_is_not_read_past_its_end(
    registry, repo, pusher, server
):
    # distribution 2.8 answers a range starting at a blob's end with the whole blob's
    # Content-Length and a 33-byte body (no 416): seen in bench/vault_bench.py with 200 MiB = 25
    # chunks. The length from Content-Range ends the copy before that.
    data = bytes(range(256))
    blob = pusher.blob(repo, data)
    recorder = Recorder()
    async with (
        make_client(registry.settings(), recorder) as src,
        make_client(server.settings()) as dst,
    ):
        how = await copy.copy_blob(src, repo, dst, "vault/y", blob.digest, chunk=len(data) // 2)
        assert how == copy.STREAMED
        assert recorder.requests == [("GET", "206"), ("GET", "206")]
        assert await dst.get_blob("vault/y", blob.digest) == data


async def test_a_blob_gone_from_the_source_is_not_found_and_nothing_is_committed(
    registry, repo, server
):
    missing = "sha256:" + "0" * 64
    async with make_client(registry.settings()) as src, make_client(server.settings()) as dst:
        with pytest.raises(errors.NotFound):
            await copy.copy_blob(src, repo, dst, "vault/z", missing)
        assert not await dst.head_blob("vault/z", missing)


async def test_a_mount_over_token_auth_asks_push_on_the_vault_and_pull_on_the_source(
    token_registry, token_issuer, repo, make_pusher
):
    pushed = make_pusher(token_registry).index(repo, "2.0.0", seed="token")
    vault = f"vault/{repo}"
    async with make_client(token_registry.settings()) as rc:
        report = await copy.copy_release(rc, repo, rc, vault, pushed.digest, "2.0.0--x")
        assert report.mounted == len(blobs_of(pushed))
    scopes = {s for r in token_issuer.requests for s in r.scopes}
    assert f"repository:{vault}:pull,push" in scopes
    assert f"repository:{repo}:pull" in scopes


async def test_no_push_rights_on_the_vault_is_an_auth_error(
    token_registry, token_issuer, repo, make_pusher
):
    pushed = make_pusher(token_registry).image(repo, "3.0.0", seed="denied")
    token_issuer.grant = lambda user, type_, name, actions: ["pull"]
    async with make_client(token_registry.settings()) as rc:
        with pytest.raises(errors.AuthError):
            await copy.copy_release(rc, repo, rc, f"vault/{repo}", pushed.digest, "3.0.0--x")


def _location(location: str) -> httpx.URL:
    settings = config.RegistrySettings(host="127.0.0.1:1", insecure=True)
    rc = client.RegistryClient(settings)
    wire_resp = client.wire.Response(
        202,
        httpx.Headers({"location": location}),
        b"",
        httpx.URL("http://127.0.0.1:1/v2/x/blobs/uploads/"),
    )
    return uploads.Uploads(rc)._location("start upload", wire_resp)


def test_an_upload_location_naming_another_address_is_reached_through_the_registry() -> None:
    # a registry behind a proxy that names its inner address: the token stays on our host
    got = _location("http://10.0.0.7:5000/v2/x/blobs/uploads/abc?_state=s")
    assert str(got) == "http://127.0.0.1:1/v2/x/blobs/uploads/abc?_state=s"
    assert str(_location("/v2/x/blobs/uploads/abc")) == "http://127.0.0.1:1/v2/x/blobs/uploads/abc"


def test_an_upload_location_off_the_registry_api_is_refused() -> None:
    with pytest.raises(errors.ProtocolError, match="off this registry"):
        _location("http://elsewhere.example/upload/1")


async def test_bytes_that_do_not_hash_to_the_digest_are_never_committed(
    registry, repo, pusher, server, make_fault_proxy
):
    blob = pusher.blob(repo, images.layer_bytes("lied", 256))
    proxy = make_fault_proxy(registry)

    def flip(answer, request):
        answer.body = bytes([answer.body[0] ^ 0xFF]) + answer.body[1:]
        return answer

    proxy.add("GET", r"/blobs/sha256:", transform=flip)
    lying = config.RegistrySettings(host=proxy.host, insecure=True, timeout=5.0)
    async with make_client(lying) as src, make_client(server.settings()) as dst:
        with pytest.raises(errors.ProtocolError, match="not committed"):
            await copy.copy_blob(src, repo, dst, "vault/lied", blob.digest)
        assert not await dst.head_blob("vault/lied", blob.digest)
