"""Observation (watchdog.observe): what the registry says about one tag, against the real
registry (a fault proxy in front for lies), with the archive a real store on SQLite; and table
tests for the pure parts (config labels, platforms, contradictions, dedupe, the bounded pool).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from watchdog import models, observe
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import db, repo

K = models.ObservationKind
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AMD64 = "linux/amd64"
ARM64 = "linux/arm64/v8"


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[repo.Store]:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'archive.db'}")
    db.upgrade(engine)
    yield repo.Store(engine)
    engine.dispose()


@pytest.fixture
def proxy(fault_proxy: faultproxy.FaultProxy) -> faultproxy.FaultProxy:
    return fault_proxy


@pytest.fixture
async def client(
    registry: support_registry.RegistryServer, proxy: faultproxy.FaultProxy
) -> AsyncIterator[registry_client.RegistryClient]:
    """A client of the open registry, through ``proxy``, that tries each request once."""
    settings = registry.settings(host=proxy.host)
    retry = dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=1, base=0.0)
    async with registry_client.RegistryClient(settings, sleep=_no_sleep, retry=retry) as rc:
        yield rc


def observer(
    client: registry_client.RegistryClient,
    archive: repo.Store,
    proxy: faultproxy.FaultProxy,
    repository: str,
) -> observe.Observer:
    return observe.Observer(client, archive, models.ImageRef.parse(f"{proxy.host}/{repository}"))


def record_of(obs: observe.Observer, tag: str, pushed: images.Pushed) -> models.TagRecord:
    """A record of ``tag`` at ``pushed``, state ok."""
    state = models.TagState.OK
    return models.TagRecord(
        obs.ref.name, tag, pushed.digest, pushed.digest, pushed.media_type, state, NOW, NOW, NOW
    )


def archive_index(obs: observe.Observer, store: repo.Store, pushed: images.PushedIndex) -> None:
    manifests = [pushed.index, *pushed.children.values()]
    store.apply_check(
        obs.ref.name,
        NOW,
        [],
        manifests=[models.Manifest(m.digest, m.media_type, m.body) for m in manifests],
    )


def delete_blob(server: support_registry.RegistryServer, repository: str, digest: str) -> None:
    resp = httpx.delete(f"{server.url}/v2/{repository}/blobs/{digest}")
    assert resp.status_code == 202, resp.text


async def test_a_new_tag_is_got_and_verified_with_every_child_for_the_archive(
    client, archive, proxy, repo, pusher
):
    release = pusher.index(repo, "1.0.0", seed="release")
    obs = observer(client, archive, proxy, repo)
    outcome = await obs.tag("1.0.0", None, listed=True)
    assert outcome.observation == models.Observation.present(release.digest, media.OCI_INDEX)
    assert [m.digest for m in outcome.manifests] == [
        release.digest,
        *(c.digest for c in release.children.values()),
    ]
    assert outcome.manifests[0].body == release.index.body
    assert outcome.images == {}  # first sight: nothing to compare with


async def test_an_unchanged_tag_costs_one_head_and_no_get(client, archive, proxy, repo, pusher):
    release = pusher.index(repo, "1.0.0", seed="release")
    obs = observer(client, archive, proxy, repo)
    proxy.reset()
    outcome = await obs.tag("1.0.0", record_of(obs, "1.0.0", release.index), listed=True)
    assert outcome.observation == models.Observation.present(release.digest, media.OCI_INDEX)
    assert outcome.manifests == []
    assert proxy.count("HEAD", "/manifests/") == 1
    assert proxy.count("GET", "/manifests/") == 0
    assert proxy.count("GET", "/blobs/") == 0


async def test_a_move_says_which_platforms_changed_and_what_both_images_are(
    client, archive, proxy, repo, pusher
):
    release = pusher.index(repo, "1.0.0", seed="release", revision="1111111", source="https://a")
    obs = observer(client, archive, proxy, repo)
    archive_index(obs, archive, release)  # what an earlier check archived
    amd64 = pusher.image(repo, None, seed="rebuild", revision="2222222", created="2026-11-01")
    entries = [
        amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
        release.children[ARM64].descriptor(
            platform={"os": "linux", "architecture": "arm64", "variant": "v8"}
        ),
    ]
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}
    ).encode()
    moved = pusher.manifest(repo, "1.0.0", body, media.OCI_INDEX)

    outcome = await obs.tag("1.0.0", record_of(obs, "1.0.0", release.index), listed=True)
    assert outcome.observation == models.Observation.present(
        moved.digest, media.OCI_INDEX, (AMD64,)
    )
    assert [m.digest for m in outcome.manifests] == [
        moved.digest,
        amd64.digest,
        release.children[ARM64].digest,
    ]
    # of an index: its linux/amd64 child's config (the old one from the archive)
    assert outcome.images == {
        "old": {"created": "2024-01-01T00:00:00Z", "revision": "1111111", "source": "https://a"},
        "new": {"created": "2026-11-01", "revision": "2222222"},
    }


async def test_image_labels_of_single_images_and_a_side_gone_is_left_out(
    client, archive, proxy, repo, pusher, registry, caplog
):
    caplog.set_level(logging.INFO, logger="watchdog.service")
    old = pusher.image(repo, "1.0.0", seed="old", revision="aaa", created=None)
    new = pusher.image(repo, "1.0.0", seed="new", revision="bbb", source="https://b")
    obs = observer(client, archive, proxy, repo)
    archive.apply_check(
        obs.ref.name, NOW, [], manifests=[models.Manifest(old.digest, old.media_type, old.body)]
    )
    record = record_of(obs, "1.0.0", old)
    outcome = await obs.tag("1.0.0", record, listed=True)
    assert outcome.images == {
        "old": {"revision": "aaa"},
        "new": {"created": "2024-01-01T00:00:00Z", "revision": "bbb", "source": "https://b"},
    }
    assert outcome.observation.changed_platforms == ()  # single images have no platforms

    # the old config blob is gone from the registry: the new side only, and a log line
    delete_blob(registry, repo, media.parse_manifest(old.body)["config"]["digest"])
    outcome = await obs.tag("1.0.0", record, listed=True)
    assert outcome.observation.digest == new.digest
    assert list(outcome.images) == ["new"]
    assert any("image_info_unavailable" in r.getMessage() for r in caplog.records)


async def test_absence_needs_the_tag_unlisted_too(client, archive, proxy, repo, pusher):
    pusher.image(repo, "1.0.0", seed="x")
    obs = observer(client, archive, proxy, repo)
    listed = await obs.tag("9.9.9", None, listed=True)
    assert listed.observation == models.Observation.failed(
        "listed in tags/list but manifest unknown"
    )
    unlisted = await obs.tag("9.9.9", None, listed=False)
    assert unlisted.observation == models.Observation.absent()
    assert unlisted.manifests == []


async def test_registry_failures_are_error_observations_never_raised(
    client, archive, proxy, repo, pusher
):
    release = pusher.image(repo, "1.0.0", seed="x")
    obs = observer(client, archive, proxy, repo)
    proxy.fail("HEAD", "/manifests/", 503)
    failed = await obs.tag("1.0.0", record_of(obs, "1.0.0", release), listed=True)
    assert failed.observation.kind is K.ERROR and failed.observation.error
    proxy.reset()
    unknown = b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}'
    proxy.fail(
        "GET", "/manifests/", 404, body=unknown, headers={"Content-Type": "application/json"}
    )
    vanished = await obs.tag("1.0.0", None, listed=True)
    assert vanished.observation.kind is K.ERROR
    assert "manifest vanished between HEAD and GET" in (vanished.observation.error or "")


async def test_a_registry_that_contradicts_itself_is_no_evidence(
    client, archive, proxy, repo, pusher
):
    release = pusher.image(repo, "1.0.0", seed="release")
    obs = observer(client, archive, proxy, repo)
    proxy.lie_digest("HEAD", "/manifests/")
    lied = await obs.tag("1.0.0", None, listed=True)
    assert lied.observation.kind is K.ERROR
    assert "the registry contradicts itself: HEAD answered" in (lied.observation.error or "")
    assert lied.manifests == []
    proxy.reset()
    # missing from tags/list yet answering another digest than the record
    other = pusher.image(repo, "1.0.0", seed="other")
    record = record_of(obs, "1.0.0", release)
    unlisted = await obs.tag("1.0.0", record, listed=False)
    assert unlisted.observation == models.Observation.failed(
        f"not in tags/list, yet the manifest answers {other.digest}"
    )


async def test_tags_keeps_the_order_of_todo(client, archive, proxy, repo, pusher):
    a = pusher.image(repo, "1.0.0", seed="a")
    b = pusher.image(repo, "2.0.0", seed="b")
    obs = observer(client, archive, proxy, repo)
    todo = [("2.0.0", True), ("1.0.0", True), ("3.0.0", False)]
    outcomes = await obs.tags(todo, {"1.0.0": record_of(obs, "1.0.0", a)}, limit=2)
    assert [o.observation.digest for o in outcomes] == [b.digest, a.digest, None]
    assert outcomes[2].observation.kind is K.ABSENT
    assert [len(o.manifests) for o in outcomes] == [1, 0, 0]  # the recorded one: HEAD only


def _config(**doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (_config(), {}),
        (b"[1, 2]", {}),
        (_config(created="2024-01-01T00:00:00Z"), {"created": "2024-01-01T00:00:00Z"}),
        (_config(created=123), {}),
        (
            _config(
                config={
                    "Labels": {
                        "org.opencontainers.image.revision": "abc",
                        "org.opencontainers.image.source": "https://x",
                        "org.opencontainers.image.title": "not kept",
                    }
                }
            ),
            {"revision": "abc", "source": "https://x"},
        ),
        (_config(config={"Labels": {"org.opencontainers.image.revision": ""}}), {}),
        (_config(config={"Labels": {"org.opencontainers.image.revision": 7}}), {}),
        (_config(config={"Labels": None}), {}),
        (_config(config=["not", "a", "dict"]), {}),
        (
            _config(config={"Labels": {"org.opencontainers.image.source": "s" * 600}}),
            {"source": "s" * 500},
        ),
    ],
)
def test_image_info(blob: bytes, expected: dict[str, str]) -> None:
    assert observe.image_info(blob) == expected


@pytest.mark.parametrize("blob", [b"not json", b"\xff\xfe\x00", b""])
def test_image_info_of_a_blob_that_is_not_json_raises_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        observe.image_info(blob)


def _index(*platforms: dict[str, str], media_type: str = media.OCI_INDEX) -> models.Manifest:
    entries = [
        {"mediaType": media.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1, "platform": p}
        for i, p in enumerate(platforms, start=1)
    ]
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return models.Manifest("sha256:" + "f" * 64, media_type, body.encode())


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (models.Manifest("sha256:" + "a" * 64, media.OCI_MANIFEST, b"{}"), {}),
        (models.Manifest("sha256:" + "a" * 64, media.DOCKER_MANIFEST, b"not json"), {}),
        (models.Manifest("sha256:" + "a" * 64, media.OCI_INDEX, b"not json"), {}),
        (_index(), {}),
        (
            _index(
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm64", "variant": "v8"},
            ),
            {AMD64: f"sha256:{1:064x}", ARM64: f"sha256:{2:064x}"},
        ),
        (
            _index({"os": "linux", "architecture": "amd64"}, media_type=media.DOCKER_MANIFEST_LIST),
            {AMD64: f"sha256:{1:064x}"},
        ),
    ],
)
def test_platforms(manifest: models.Manifest, expected: dict[str, str]) -> None:
    assert observe.platforms(manifest) == expected


D1, D2, D3 = (f"sha256:{c * 64}" for c in "123")


def _record(current: str | None) -> models.TagRecord:
    return models.TagRecord(
        "r.example/app", "1.0.0", D1, current, None, models.TagState.OK, NOW, NOW, NOW
    )


# HEAD and GET disagreeing is refused by resolve_digest (tests/registry/test_resolve.py) and, end
# to end, in test_a_registry_that_contradicts_itself_is_no_evidence above.
@pytest.mark.parametrize(
    ("served", "record", "listed", "expected"),
    [
        (D2, None, True, None),
        (D2, _record(D1), True, None),  # a move
        (D1, _record(D1), False, None),  # unlisted, confirming the record
        (D2, _record(D1), False, f"not in tags/list, yet the manifest answers {D2}"),
        (D2, None, False, f"not in tags/list, yet the manifest answers {D2}"),
        (D2, _record(None), False, f"not in tags/list, yet the manifest answers {D2}"),
    ],
)
def test_contradiction(
    served: str,
    record: models.TagRecord | None,
    listed: bool,
    expected: str | None,
) -> None:
    manifest = models.Manifest(served, media.OCI_MANIFEST, b"{}")
    found = observe.contradiction(manifest, record, listed)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


def test_dedupe_keeps_the_first_of_each_digest_in_order() -> None:
    a, b, a2 = (
        models.Manifest(D1, media.OCI_MANIFEST, b"a"),
        models.Manifest(D2, media.OCI_MANIFEST, b"b"),
        models.Manifest(D1, media.OCI_MANIFEST, b"a again"),
    )
    assert observe.dedupe([a, b, a2, b]) == [a, b]
    assert observe.dedupe([]) == []


@pytest.mark.parametrize(("count", "limit"), [(0, 4), (1, 4), (10, 3), (5, 1), (3, 0)])
async def test_bounded_runs_at_most_limit_at_once_results_in_order(count: int, limit: int) -> None:
    running = most = 0

    async def fn(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        for _ in range(count - i):  # the first items finish last
            await asyncio.sleep(0)
        running -= 1
        return i * i

    assert await observe.bounded(list(range(count)), fn, limit=limit) == [
        i * i for i in range(count)
    ]
    assert most == min(max(1, limit), count)


async def test_bounded_stops_every_worker_when_one_raises() -> None:
    cancelled = 0
    never = asyncio.Event()

    async def fn(i: int) -> int:
        nonlocal cancelled
        if i == 2:
            raise RuntimeError("a bug")
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return i

    with pytest.raises(RuntimeError, match="a bug"):
        await observe.bounded(list(range(6)), fn, limit=3)
    for _ in range(3):  # let the cancellations arrive
        await asyncio.sleep(0)
    assert cancelled == 2  # the two others in flight; the rest never started
