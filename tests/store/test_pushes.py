"""Who pushed, in the store (store.pushes), on SQLite and PostgreSQL: noted, read back within
the window, pruned after it."""

from __future__ import annotations

import datetime as dt

from watchdog import notifications
from watchdog.store import repo

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
CI = notifications.Pusher("registry", "ci-bot", "10.0.0.5", "docker/27.1")


def _push(
    tag: str | None, repository: str = "acme/api", **kw: object
) -> notifications.RegistryEvent:
    return notifications.RegistryEvent(
        kw.pop("action", "push"),  # type: ignore[arg-type]
        repository,
        tag,
        "ghcr.io",
        pusher=kw.pop("pusher", CI),  # type: ignore[arg-type]
        digest="sha256:" + "b" * 64,
    )


def test_pushes_are_kept_for_the_window_and_read_back_by_repository(store: repo.Store) -> None:
    pushes = store.pushes
    anonymous = _push("1.1", pusher=None)
    pull = _push("1.2", action="pull")
    assert pushes.note([_push("1.0"), anonymous, pull, _push("1.0", "acme/web")], T0) == 2
    later = T0 + dt.timedelta(minutes=5)
    assert pushes.note([_push("2.0", action="delete")], later) == 1
    got = pushes.recent("acme/api", later)
    assert [(e.tag, e.action, e.pusher, at) for e, at in got] == [
        ("1.0", "push", CI, T0),
        ("2.0", "delete", CI, later),
    ]
    assert got[0][0].digest == "sha256:" + "b" * 64 and got[0][0].host == "ghcr.io"
    # past the window: not read, and pruned when the next pushes are noted
    much_later = T0 + dt.timedelta(seconds=notifications.LEDGER_WINDOW + 1)
    assert [e.tag for e, _ in pushes.recent("acme/api", much_later)] == ["2.0"]
    assert pushes.note([pull], much_later) == 0  # nothing kept: nothing written, nothing pruned
    assert [e.repository for e, _ in pushes.recent("acme/web", T0)] == ["acme/web"]
    pushes.note([_push("3.0", "acme/db")], much_later)
    assert [e.repository for e, _ in pushes.recent("acme/web", T0)] == []
