"""Restore from anywhere: a release whose bytes the source registry lost (overwritten and
garbage-collected with distribution's real ``garbage-collect --delete-untagged``, or its whole
storage wiped) is put back from the vault, every platform pullable, bit for bit."""

from __future__ import annotations

import sqlalchemy as sa

from tests import test_vaulting
from tests.support import images
from watchdog import models, restore
from watchdog.registry import client as registry_client
from watchdog.registry import media
from watchdog.store import tables

K = models.EventKind
Rig = test_vaulting.Rig
make_rig = test_vaulting.make_rig  # the fixture: a store, clients, a checker and a copier


async def assert_pullable(
    rc: registry_client.RegistryClient, path: str, tag: str, pushed: images.PushedIndex
) -> None:
    """The tag answers the index, and every child manifest and blob is in ``path``."""
    top = await rc.get_manifest(path, tag)
    assert top.body == pushed.index.body
    for platform, child in pushed.children.items():
        got = await rc.get_manifest(path, child.digest)
        assert got.body == child.body, platform
        for blob in media.blobs(child.body):
            await rc.get_blob(path, blob)  # raises unless present and verified


def restorer(rig: Rig) -> restore.Restorer:
    return restore.Restorer(
        rig.store,
        rig.clients.get(rig.source.host),
        clock=rig.clock,
        actor="test",
        registries=rig.clients.get,
    )


async def test_overwrite_gc_delete_untagged_then_restore_every_platform_pullable(
    own_registry, repo, make_pusher, make_rig, db_url
):
    """On SQLite and PostgreSQL (``db_url``): the record, the archive and the vault's queue."""
    pusher = make_pusher(own_registry)
    original = pusher.index(repo, "0.15.0", seed="original")
    # the vault on the same registry: mounts
    rig = make_rig(own_registry, own_registry, repo, database_url=db_url)
    await rig.check()
    assert await rig.copier.drain(30) == 0
    pusher.index(repo, "0.15.0", seed="overwrite")
    moved = await rig.check()
    assert [e.kind for e in moved.events] == [K.MOVED]
    own_registry.garbage_collect(delete_untagged=True)
    rc = rig.clients.get(own_registry.host)
    # the GC took the original release from the source: untagged, its manifests are gone
    assert not await rc.manifest_exists(repo, original.digest)
    assert not any([await rc.manifest_exists(repo, c.digest) for c in original.children.values()])
    ref = rig.source.with_tag("0.15.0")
    outcome = await restorer(rig).run(ref)
    assert outcome.restored, outcome.reason
    await assert_pullable(rc, repo, "0.15.0", original)


async def test_source_storage_wiped_restore_from_a_vault_on_another_registry(
    own_registry, server, repo, make_pusher, make_rig
):
    original = make_pusher(own_registry).index(repo, "1.2.3", seed="wiped")
    rig = make_rig(own_registry, server, repo)
    await rig.check()
    assert await rig.copier.drain(30) == 0
    own_registry.wipe_storage()
    ref = rig.source.with_tag("1.2.3")
    plan = await restorer(rig).plan(ref)
    assert plan.ok, plan.problems
    blobs = {b for c in original.children.values() for b in media.blobs(c.body)}
    assert set(plan.blobs_from_vault) == blobs
    assert plan.vault.startswith(f"{server.host}/vault/")
    text = "\n".join(plan.describe())
    assert "back from the vault" in text
    outcome = await restorer(rig).run(ref)
    assert outcome.restored, outcome.reason
    assert outcome.event.detail["blobs_from_vault"] == len(blobs)
    await assert_pullable(rig.clients.get(own_registry.host), repo, "1.2.3", original)


async def test_without_a_kept_copy_the_lost_blobs_are_problems_and_nothing_changes(
    own_registry, server, repo, make_pusher, make_rig
):
    make_pusher(own_registry).image(repo, "2.0.0", seed="unvaulted")
    rig = make_rig(own_registry, server, repo)
    await rig.check()  # queued, never copied
    own_registry.wipe_storage()
    plan = await restorer(rig).plan(rig.source.with_tag("2.0.0"))
    assert not plan.ok and not plan.blobs_from_vault
    assert any("gone from the registry" in p for p in plan.problems)
    outcome = await restorer(rig).run(rig.source.with_tag("2.0.0"))
    assert not outcome.restored


async def test_a_child_manifest_not_archived_comes_back_from_the_vault(
    own_registry, repo, make_pusher, make_rig
):
    pusher = make_pusher(own_registry)
    original = pusher.index(repo, "3.0.0", seed="child")
    rig = make_rig(own_registry, own_registry, repo)
    await rig.check()
    assert await rig.copier.drain(30) == 0
    child = original.children["linux/arm64/v8"]
    pusher.delete_manifest(repo, child.digest)
    # the archive lost it too (a database restored from an older backup, say)
    with rig.store.engine.begin() as conn:
        conn.execute(sa.delete(tables.manifests).where(tables.manifests.c.digest == child.digest))
    plan = await restorer(rig).plan(rig.source.with_tag("3.0.0"))
    assert plan.ok, plan.problems
    assert plan.children_from_vault == (child.digest,)
    assert "from the vault" in "\n".join(plan.describe())
    outcome = await restorer(rig).run(rig.source.with_tag("3.0.0"))
    assert outcome.restored, outcome.reason
    await assert_pullable(rig.clients.get(own_registry.host), repo, "3.0.0", original)


async def test_delete_by_digest_gc_then_restore_from_the_vault(
    own_registry, repo, make_pusher, make_rig
):
    pusher = make_pusher(own_registry)
    original = pusher.index(repo, "0.9.0", seed="deleted")
    rig = make_rig(own_registry, own_registry, repo)
    await rig.check()
    assert await rig.copier.drain(30) == 0
    pusher.delete_manifest(repo, original.digest)  # like `skopeo delete`: the tag goes with it
    own_registry.garbage_collect(delete_untagged=True)
    rc = rig.clients.get(own_registry.host)
    assert not await rc.manifest_exists(repo, original.digest)
    outcome = await restorer(rig).run(rig.source.with_tag("0.9.0"))
    assert outcome.restored, outcome.reason
    await assert_pullable(rc, repo, "0.9.0", original)
