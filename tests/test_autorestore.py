"""``on_move: restore`` (watchdog.autorestore): which promised restores a check finishes, and
loop protection by window, against the real registry and store (SQLite and PostgreSQL).

The restore war, the restore cut short by a crash and the ``alert`` watch that never restores by
itself are in tests/test_restore.py, with the restore procedure they drive.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests import test_restore
from tests.support import images
from tests.support import registry as support_registry
from watchdog import autorestore, config, models, service
from watchdog.store import repo as store_repo

K = models.EventKind
S = models.TagState
Obs = models.Observation
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
D1, D2 = (f"sha256:{c * 64}" for c in "12")


def _change(kind: K | None) -> models.Change:
    event = None if kind is None else models.Event("r.example/app", "1.0.0", kind, T0)
    return models.Change("r.example/app", "1.0.0", None, event)


@pytest.mark.parametrize(
    ("obs", "event", "finishes"),
    [
        (Obs.present(D2, None), None, True),  # still at the moved digest: the restore's to do
        (Obs.present(D1, None), K.REVERTED, True),  # our PUT got there before the crash
        (Obs.present(D2, None), K.MOVED, False),  # moved again: a new move, a new promise
        (Obs.absent(), None, False),
        (Obs.absent(), K.DELETED, False),
        (Obs.failed("timeout"), None, False),
    ],
)
def test_finishes_restore(obs: models.Observation, event: K | None, finishes: bool) -> None:
    assert autorestore.finishes_restore(obs, _change(event)) is finishes


def _watch(on_move: str) -> config.WatchSettings:
    return config.WatchSettings(repository=models.ImageRef.parse("r.example/app"), on_move=on_move)


def _record(tag: str, state: S) -> models.TagRecord:
    current = D1 if state is S.OK else D2
    return models.TagRecord("r.example/app", tag, D1, current, None, state, T0, T0, T0)


def _seed(store: store_repo.Store, tag: str, *events: tuple[K, dict[str, object]]) -> None:
    state = S.DRIFTED if events and events[-1][0] is not K.FIRST_SEEN else S.OK
    record = _record(tag, state)
    changes = [
        models.Change(
            "r.example/app", tag, record, models.Event("r.example/app", tag, k, T0, detail=d)
        )
        for k, d in events
    ]
    store.apply_changes("r.example/app", T0, changes)


async def test_unfinished_are_the_moves_that_promised_a_restore_and_got_no_outcome(
    store: store_repo.Store,
) -> None:
    promised = {"restoring": True}
    _seed(store, "1.0.0", (K.FIRST_SEEN, {}), (K.MOVED, promised))  # the crash case
    _seed(store, "2.0.0", (K.FIRST_SEEN, {}), (K.MOVED, {}))  # an alert watch's move
    _seed(store, "3.0.0", (K.FIRST_SEEN, {}), (K.MOVED, promised), (K.RESTORE_FAILED, {}))
    _seed(store, "4.0.0", (K.FIRST_SEEN, {}), (K.MOVED, promised), (K.RESTORE_STOPPED, {}))
    _seed(store, "5.0.0", (K.FIRST_SEEN, {}))
    records = store.load_tags("r.example/app")
    assert [t for t, r in records.items() if r.state is S.DRIFTED] == [
        "1.0.0",
        "2.0.0",
        "3.0.0",
        "4.0.0",
    ]

    found = await autorestore.unfinished(store, _watch("restore"), records)
    assert list(found) == ["1.0.0"]
    assert found["1.0.0"].kind is K.MOVED and found["1.0.0"].detail["restoring"] is True
    # an alert watch finishes nothing, and a watch with nothing drifted asks nothing
    assert await autorestore.unfinished(store, _watch("alert"), records) == {}
    calm = {"5.0.0": records["5.0.0"]}
    assert await autorestore.unfinished(_NoStore(), _watch("restore"), calm) == {}  # type: ignore[arg-type]


class _NoStore:
    """A store that must not be asked."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the store was asked ({name})")


async def test_loop_protection_counts_restores_within_the_window_before_each_move(
    store: store_repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    pusher.index(repo, "0.15.0", seed="release")
    checker, watch = test_restore.make_checker(store, registry, repo, max_per_tag=1)
    clock = checker.clock
    assert isinstance(clock, test_restore.Clock)
    await checker.check_watch(watch)

    def kinds(result: service.CheckResult) -> list[K]:
        return [e.kind for e in result.events]

    pusher.image(repo, "0.15.0", seed="war-0")
    assert kinds(await checker.check_watch(watch)) == [K.MOVED, K.RESTORED]
    pusher.image(repo, "0.15.0", seed="war-1")
    assert kinds(await checker.check_watch(watch)) == [K.MOVED, K.RESTORE_STOPPED]
    assert (await checker.check_watch(watch)).events == []  # stopped: it waits for a person
    # two hours later (the window is one), the restore is out of it: the next move is put back
    clock.now += dt.timedelta(hours=2)
    pusher.image(repo, "0.15.0", seed="war-2")
    assert kinds(await checker.check_watch(watch)) == [K.MOVED, K.RESTORED]
    # and within that new window, one more move stops it again, with its own loud event
    pusher.image(repo, "0.15.0", seed="war-3")
    assert kinds(await checker.check_watch(watch)) == [K.MOVED, K.RESTORE_STOPPED]
    history = [e.kind for e in store.history(watch.name, "0.15.0")]
    assert history.count(K.RESTORE_STOPPED) == 2 and history.count(K.RESTORED) == 2
    restored = checker.metrics.registry.get_sample_value(
        "tag_watchdog_restores_total", {"repository": watch.name, "result": "restored"}
    )
    assert restored == 2.0
