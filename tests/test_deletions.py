"""Deleted releases (issue 12, item 3) against the real registry, on SQLite and PostgreSQL: a
confirmed deletion is put back on a restore watch (``on_delete``, by default as ``on_move``),
within the same loop protection, resumed after a crash; its alert tells the truth; a deleted tag
can be restored from the CLI too."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import images, storage
from tests.support import registry as support_registry
from tests.support.cli import run
from tests.test_restore import Clock, _no_sleep, fetch
from watchdog import config, metrics, models, service
from watchdog.alerts import render
from watchdog.registry import client as registry_client
from watchdog.store import repo as store_repo

K = models.EventKind
S = models.TagState


def make_checker(
    store: store_repo.Store,
    server: support_registry.RegistryServer,
    repository: str,
    *,
    on_move: str = "restore",
    on_delete: str | None = None,
    max_per_tag: int = 3,
) -> tuple[service.Checker, config.WatchSettings]:
    ref = models.ImageRef.parse(f"{server.host}/{repository}")
    watch = config.WatchSettings(repository=ref, on_move=on_move, on_delete=on_delete)
    settings = config.Settings(
        registries=(server.settings(),),
        watches=(watch,),
        restore=config.RestoreSettings(max_per_tag=max_per_tag, window=3600.0),
    )
    clients = service.Clients(
        settings,
        sleep=_no_sleep,
        retry=dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=2, base=0.0),
    )
    return service.Checker(settings, store, clients, metrics.Metrics(), clock=Clock()), watch


async def confirm_deletion(checker: service.Checker, watch: config.WatchSettings) -> Any:
    """Two checks: the first definitive absence is only remembered, the second confirms."""
    first = await checker.check_watch(watch)
    assert first.events == [], first.events
    return await checker.check_watch(watch)


def text_of(event: models.Event, context: render.Context) -> str:
    message = render.render_event(event, context)
    return message.text + "\n" + json.dumps(message.blocks)


async def test_a_deleted_release_is_put_back_on_a_restore_watch(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo)  # on_move: restore covers deletions
    await checker.check_watch(watch)
    pusher.delete_manifest(repo, release.digest)  # delete by digest: the tag goes with it
    assert fetch(registry, repo, "0.15.0").status_code == 404

    result = await confirm_deletion(checker, watch)
    assert result.ok, result
    assert [e.kind for e in result.events] == [K.DELETED, K.RESTORED]
    deleted, restored = result.events
    assert deleted.detail["policy"] == "on_move: restore" and deleted.detail["restoring"] is True
    assert deleted.detail["digest_in_registry"] is False  # only the archive has it now
    assert restored.new_digest == release.digest and restored.detail["source"] == "archive"
    served = fetch(registry, repo, "0.15.0")
    assert served.headers["docker-content-digest"] == release.digest
    assert served.content == release.index.body  # byte-identical
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK and record.current_digest == release.digest
    assert result.drifted == []
    assert (await checker.check_watch(watch)).events == []  # quiet again

    # the alert: no "new digest" (there is none), the real policy, no hand commands while the
    # watchdog is putting it back (the outcome follows: `restored`, or `restore_failed`)
    shown = text_of(deleted, render.Context(on_move="restore"))
    assert "new digest" not in shown.lower() and "still answers" not in shown
    assert "restoring the recorded digest (`on_move: restore`)" in shown
    assert "Put it back by hand" not in shown and "crane tag" not in shown
    assert "gone from the registry too" in shown


async def test_on_delete_alert_leaves_the_deletion_to_a_person_who_restores_it_from_the_cli(
    tmp_path: Path,
    store: store_repo.Store,
    db_url: str,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_delete="alert")
    await checker.check_watch(watch)
    storage.untag(registry, repo, "0.15.0")  # the tag alone: the digest stays
    result = await confirm_deletion(checker, watch)
    (deleted,) = result.events
    assert deleted.kind is K.DELETED and "restoring" not in deleted.detail
    assert deleted.detail["policy"] == "on_delete: alert"
    assert deleted.detail["digest_in_registry"] is True
    assert fetch(registry, repo, "0.15.0").status_code == 404
    shown = text_of(deleted, render.Context(on_move="restore", on_delete="alert"))
    assert "alerted only (`on_delete: alert`): the tag stays deleted" in shown
    assert f"crane tag {watch.name}@{release.digest} 0.15.0" in shown  # the digest is there
    assert "Only the tag was deleted" in shown

    # a person restores it: the plan does not need the tag to exist (it answers 404)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: {db_url}\n"
        f"watches: [{{repository: '{watch.name}', on_move: restore, on_delete: alert}}]\n"
    )
    ref = f"{watch.name}:0.15.0"
    plan = run("restore", ref, "--dry-run", "--json", "-c", str(cfg))
    assert plan.returncode == 0, plan.stderr
    shape = json.loads(plan.stdout)
    assert shape["digest"] == release.digest and shape["current_digest"] is None
    assert shape["source"] == "registry" and shape["problems"] == []
    done = run("restore", ref, "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    assert fetch(registry, repo, "0.15.0").content == release.index.body
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.state is S.OK


async def test_something_that_keeps_deleting_a_release_stops_auto_restore(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="release")
    checker, watch = make_checker(
        store, registry, repo, on_move="alert", on_delete="restore", max_per_tag=2
    )
    await checker.check_watch(watch)
    kinds = []
    for _ in range(3):
        storage.untag(registry, repo, "1.0.0")
        result = await confirm_deletion(checker, watch)
        kinds.append([e.kind for e in result.events])
    assert kinds == [
        [K.DELETED, K.RESTORED],
        [K.DELETED, K.RESTORED],
        [K.DELETED, K.RESTORE_STOPPED],
    ]
    event = result.events[1]
    assert event.detail["reason"] == "something keeps deleting this tag"
    assert event.detail["after"] == "deleted"
    assert "Something keeps deleting" in text_of(event, render.Context())
    assert fetch(registry, repo, "1.0.0").status_code == 404  # left to a person
    record = store.get_tag(watch.name, "1.0.0")
    assert record is not None and record.state is S.DELETED
    assert record.recorded_digest == release.digest


async def test_a_restore_of_a_deletion_cut_short_by_a_crash_is_finished_by_the_next_check(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="release")
    checker, watch = make_checker(store, registry, repo)
    await checker.check_watch(watch)
    storage.untag(registry, repo, "1.0.0")
    await checker.check_watch(watch)

    class Crash(BaseException):  # a kill, not a bug: a check turns an Exception into a failure
        pass

    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise Crash  # the daemon dies after the `deleted` commit, before the outcome's

    monkeypatch.setattr(checker.restorer, "run", crash)
    with pytest.raises(Crash):
        await checker.check_watch(watch)
    assert [e.kind for e in store.history(watch.name, "1.0.0")][-1] is K.DELETED
    restarted, _ = make_checker(store, registry, repo)
    result = await restarted.check_watch(watch)
    assert [e.kind for e in result.events] == [K.RESTORED]
    assert fetch(registry, repo, "1.0.0").headers["docker-content-digest"] == release.digest
    assert (await restarted.check_watch(watch)).events == []
