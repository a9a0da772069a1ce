"""The vault's durable state, on SQLite and PostgreSQL: copies queued in the transaction of the
event that asks for them (a failure mid-transaction leaves neither), their states, backfill."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from watchdog import models
from watchdog.store import repo, tables

REPO = "ghcr.io/deephaven/server"
OTHER = "ghcr.io/deephaven/other"
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
K = models.EventKind


def _change(tag: str, kind: K, repository: str = REPO, new: str = NEW) -> models.Change:
    record = models.TagRecord(repository, tag, new, new, None, models.TagState.OK, T0, T0, T0)
    event = models.Event(repository, tag, kind, T0, old_digest=OLD, new_digest=new)
    return models.Change(repository, tag, record, event)


@pytest.fixture
def vaulted(store: repo.Store) -> repo.Store:
    return repo.Store(store.engine, vaulted=[REPO])


def test_first_seen_accepted_and_restored_queue_a_copy_moves_do_not(vaulted: repo.Store) -> None:
    vaulted.apply_check(
        REPO,
        T0,
        [_change("1.0", K.FIRST_SEEN), _change("2.0", K.MOVED), _change("3.0", K.ACCEPTED)],
    )
    vaulted.apply_changes(REPO, T0, [_change("4.0", K.RESTORED)])
    copies = vaulted.vault.copies()
    assert sorted(k[1] for k in copies) == ["1.0", "3.0", "4.0"]
    assert {c.state for c in copies.values()} == {"pending"}
    assert vaulted.vault.pending_count() == 3
    # a repository that is not vaulted (vault: false) queues nothing
    vaulted.apply_check(OTHER, T0, [_change("1.0", K.FIRST_SEEN, OTHER)])
    assert vaulted.vault.copies(OTHER) == {}


def test_a_failure_mid_transaction_leaves_neither_event_nor_copy(vaulted: repo.Store) -> None:
    engine = vaulted.engine

    def fail_on_vault(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO VAULT_COPIES"):
            raise RuntimeError("disk full, say")

    sa.event.listen(engine, "before_cursor_execute", fail_on_vault)
    try:
        with pytest.raises(Exception, match="disk full"):
            vaulted.apply_check(REPO, T0, [_change("1.0", K.FIRST_SEEN)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_on_vault)
    assert vaulted.history(REPO, "1.0") == []
    assert vaulted.vault.copies() == {}


def test_states_kept_failed_retry_and_requeue_of_a_failed_copy(vaulted: repo.Store) -> None:
    queue = vaulted.vault
    vaulted.apply_check(REPO, T0, [_change("1.0", K.FIRST_SEEN), _change("2.0", K.FIRST_SEEN)])
    one, two = queue.due(T0)
    later = T0 + dt.timedelta(minutes=5)
    queue.retry_later(one.id, T0, later, "HTTP 503")
    assert [c.id for c in queue.due(T0)] == [two.id]
    assert queue.next_try() == T0
    queue.mark_kept(two.id, T0, "vault/ghcr.io/deephaven/server", "2.0--" + "b" * 64)
    assert queue.next_try() == later
    assert [c.id for c in queue.due(later)] == [one.id]
    queue.mark_failed(one.id, later, "HTTP 403 DENIED: no push rights")
    assert queue.pending_count() == 0
    got = queue.get(one.id)
    assert got is not None and got.state == "failed" and got.attempts == 2
    assert got.reason == "HTTP 403 DENIED: no push rights"
    kept = queue.kept(REPO, NEW)
    assert [(c.tag, c.vault_tag) for c in kept] == [("2.0", "2.0--" + "b" * 64)]
    # accepting the digest again asks for the failed copy again; the kept one stays kept
    vaulted.apply_changes(REPO, later, [_change("1.0", K.ACCEPTED), _change("2.0", K.ACCEPTED)])
    states = {k[1]: c for k, c in queue.copies().items()}
    assert states["1.0"].state == "pending" and states["1.0"].attempts == 0
    assert states["1.0"].reason is None
    assert states["2.0"].state == "kept"


def test_backfill_queues_recorded_tags_that_have_no_copy(vaulted: repo.Store) -> None:
    plain = repo.Store(vaulted.engine)  # recorded before the vault was configured
    plain.apply_check(REPO, T0, [_change("1.0", K.FIRST_SEEN), _change("2.0", K.FIRST_SEEN)])
    deleted = models.TagRecord(REPO, "0.9", OLD, None, None, models.TagState.DELETED, T0, T0, T0)
    plain.apply_changes(REPO, T0, [models.Change(REPO, "0.9", deleted, None)])
    plain.apply_check(OTHER, T0, [_change("1.0", K.FIRST_SEEN, OTHER)])
    assert vaulted.vault.copies() == {}
    assert vaulted.vault.backfill(T0) == 2
    assert sorted(vaulted.vault.copies()) == [(REPO, "1.0", NEW), (REPO, "2.0", NEW)]
    assert vaulted.vault.backfill(T0) == 0


def test_the_table_refuses_an_unknown_state(vaulted: repo.Store) -> None:
    with pytest.raises(sa.exc.IntegrityError), vaulted.engine.begin() as conn:
        conn.execute(
            sa.insert(tables.vault_copies).values(
                repository=REPO,
                tag="1.0",
                digest=NEW,
                state="maybe",
                created_at=T0,
                updated_at=T0,
                next_try=T0,
            )
        )
