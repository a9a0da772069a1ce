"""Observation (watchdog.observe): what the registry says about one tag, against the real
registry (a fault proxy in front for lies), with the archive a real store on SQLite; and table
tests for the pure parts (config labels, platforms, contradictions, child sizes, the bounded pool).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from watchdog import errors, models, observe
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
    # the index and every child are archived, byte for byte, before the tag is recorded
    for m in [release.index, *release.children.values()]:
        kept = archive.get_manifest(obs.ref.name, m.digest)
        assert kept is not None and kept.body == m.body
    assert outcome.images == {}  # first sight: nothing to compare with


async def test_an_unchanged_tag_costs_one_head_and_no_get(client, archive, proxy, repo, pusher):
    release = pusher.index(repo, "1.0.0", seed="release")
    obs = observer(client, archive, proxy, repo)
    proxy.reset()
    outcome = await obs.tag("1.0.0", record_of(obs, "1.0.0", release.index), listed=True)
    assert outcome.observation == models.Observation.present(release.digest, media.OCI_INDEX)
    assert archive.archived_digests(obs.ref.name, [release.digest]) == set()
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
    assert archive.archived_digests(
        obs.ref.name, [moved.digest, amd64.digest, release.children[ARM64].digest]
    ) == {moved.digest, amd64.digest, release.children[ARM64].digest}
    # only what the archive lacked was fetched: the index and the new child, not the arm64 one
    assert proxy.count("GET", f"/manifests/{release.children[ARM64].digest}") == 0
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
    assert archive.archived_digests(obs.ref.name, [release.digest]) == set()
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
    # the new one archived; the recorded one: HEAD only
    assert archive.archived_digests(obs.ref.name, [a.digest, b.digest]) == {b.digest}


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


def _index(*entries: dict[str, object]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}
    ).encode()


def test_child_sizes_each_child_once_with_a_sane_declared_size() -> None:
    big = media.MAX_MANIFEST_BYTES
    body = _index(
        {"digest": D1, "size": 500},
        {"digest": D2, "size": -3},
        {"digest": D1, "size": 7},  # listed twice: the first wins
        {"digest": "sha256:" + "c" * 64, "size": big * 10},
        {"digest": "sha256:" + "d" * 64, "size": True},
    )
    assert observe.child_sizes(body) == {
        D1: 500,
        D2: big,
        "sha256:" + "c" * 64: big,
        "sha256:" + "d" * 64: big,
    }
    assert observe.child_sizes(_index()) == {}


@pytest.mark.parametrize("digest", [D1 + "\n", "sha256:../../v2/x", "md5:abc"])
def test_child_sizes_refuses_a_child_digest_outside_the_grammar(digest: str) -> None:
    with pytest.raises(errors.ProtocolError, match="not a sha256 digest"):
        observe.child_sizes(_index({"digest": D1, "size": 1}, {"digest": digest, "size": 1}))


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


async def test_children_are_fetched_a_few_at_a_time_and_archived_before_the_tag_counts(
    client, archive, proxy, repo, pusher
):
    """An index's children are fetched concurrently, at most ``children_limit`` at once; one
    that cannot be had makes the tag an error (no record may point at an incomplete archive)
    while those fetched stay archived, and the next look fetches only what is missing."""
    children = {
        f"linux/arch{i}": pusher.image(repo, None, seed=f"child{i}", architecture=f"arch{i}")
        for i in range(12)
    }
    entries = [
        c.descriptor(platform={"os": "linux", "architecture": key.split("/")[1]})
        for key, c in children.items()
    ]
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}
    ).encode()
    index = pusher.manifest(repo, "1.0.0", body, media.OCI_INDEX)
    lock = threading.Lock()
    flight = {"now": 0, "most": 0}

    def overlapping(answer: faultproxy.Answer, request: faultproxy.Seen) -> faultproxy.Answer:
        with lock:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
        time.sleep(0.05)  # long enough for the others in flight to arrive meanwhile
        with lock:
            flight["now"] -= 1
        return answer

    lost = list(children.values())[5].digest
    proxy.fail("GET", f"/manifests/{lost}", 500)  # the first matching rule wins
    proxy.add("GET", r"/manifests/sha256:", transform=overlapping)
    obs = dataclasses.replace(observer(client, archive, proxy, repo), children_limit=4)
    failed = await obs.tag("1.0.0", None, listed=True)
    assert failed.observation.kind is K.ERROR
    assert 2 <= flight["most"] <= 4, flight
    digests = [c.digest for c in children.values()]
    kept = archive.archived_digests(obs.ref.name, [index.digest, *digests])
    assert index.digest not in kept and lost not in kept  # the index only after all children
    assert kept  # those fetched before the failure stay (verified bytes)

    proxy.reset()
    await asyncio.sleep(0.3)  # the proxy threads of the cancelled fetches log them on the way out
    before = {d: proxy.count("GET", f"/manifests/{d}") for d in digests}
    ok = await obs.tag("1.0.0", None, listed=True)
    assert ok.observation == models.Observation.present(index.digest, media.OCI_INDEX)
    assert archive.archived_digests(obs.ref.name, [index.digest, *digests]) == {
        index.digest,
        *digests,
    }
    # only the children still missing were fetched again
    fetched = {d: proxy.count("GET", f"/manifests/{d}") - before[d] for d in digests}
    assert fetched == {d: 0 if d in kept else 1 for d in digests}
