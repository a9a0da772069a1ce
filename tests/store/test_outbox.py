"""The store side of the alert outbox, on SQLite and PostgreSQL: rows written atomically with their
events (a failure mid-transaction leaves neither), leases, ordering per tag, threads."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from watchdog import models
from watchdog.store import repo, tables

REPO = "ghcr.io/deephaven/server"
T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
K = models.EventKind


def _record(tag: str, state: models.TagState = models.TagState.OK) -> models.TagRecord:
    return models.TagRecord(REPO, tag, OLD, OLD, None, state, T0, T0, T0)


def _change(tag: str, kind: K, when: dt.datetime = T0) -> models.Change:
    event = models.Event(REPO, tag, kind, when, old_digest=OLD, new_digest=NEW)
    return models.Change(REPO, tag, _record(tag), event)


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_alerted_events_get_one_outbox_row_per_channel_first_sight_none(
    alerting: repo.Store,
) -> None:
    events = alerting.apply_check(REPO, T0, [_change("1.0", K.FIRST_SEEN), _change("2.0", K.MOVED)])
    rows = alerting.outbox.outbox_rows()
    assert [(r["event_id"], r["channel"], r["status"]) for r in rows] == [
        (events[1].id, "slack", "pending")
    ]
    assert rows[0]["repository"] == REPO and rows[0]["tag"] == "2.0"
    assert alerting.outbox.pending_alerts() == 1
    # a store without channels queues nothing
    silent = repo.Store(alerting.engine)
    silent.apply_check(REPO, T0, [_change("3.0", K.MOVED)])
    assert alerting.outbox.pending_alerts() == 1


def test_a_failure_mid_transaction_leaves_neither_event_nor_outbox_row(
    alerting: repo.Store,
) -> None:
    engine = alerting.engine

    def fail_on_outbox(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO OUTBOX"):
            raise RuntimeError("disk full, say")

    sa.event.listen(engine, "before_cursor_execute", fail_on_outbox)
    try:
        with pytest.raises(RuntimeError):
            alerting.apply_check(REPO, T0, [_change("1.0", K.MOVED)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_on_outbox)
    assert _count(engine, tables.events) == 0
    assert _count(engine, tables.tags) == 0
    assert _count(engine, tables.outbox) == 0
    # and when it works, both are there
    alerting.apply_check(REPO, T0, [_change("1.0", K.MOVED)])
    assert _count(engine, tables.events) == 1 and _count(engine, tables.outbox) == 1


def test_claims_lease_rows_and_a_crashed_worker_s_lease_runs_out(alerting: repo.Store) -> None:
    (event,) = alerting.apply_check(REPO, T0, [_change("1.0", K.MOVED)])
    (item,) = alerting.outbox.claim_alerts(T0, lease=60)
    assert item.event == event and item.attempts == 1 and item.thread_id is None
    assert item.first_seen == T0
    # leased: nobody else gets it, not even a second worker
    assert alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=30), lease=60) == []
    # the worker died without a word: the lease runs out and the row is handed out again
    (again,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=61), lease=60)
    assert again.id == item.id and again.attempts == 2
    alerting.outbox.mark_delivered(item.id, T0 + dt.timedelta(seconds=62), "1700000000.000001")
    assert alerting.outbox.pending_alerts() == 0
    assert alerting.outbox.claim_alerts(T0 + dt.timedelta(hours=1), lease=60) == []


def test_follow_ups_wait_for_earlier_alerts_of_their_tag_and_go_into_its_thread(
    alerting: repo.Store,
) -> None:
    moved, restored = alerting.apply_check(
        REPO, T0, [_change("1.0", K.MOVED), _change("1.0", K.RESTORED)]
    )
    (other,) = alerting.apply_check(REPO, T0, [_change("2.0", K.DELETED)])
    first = alerting.outbox.claim_alerts(T0, lease=60, limit=1)
    assert [i.event.id for i in first if i.event] == [moved.id]
    # the move is out for delivery: the restore of the same tag waits, another tag does not
    assert [i.event.id for i in alerting.outbox.claim_alerts(T0, lease=60) if i.event] == [other.id]
    alerting.outbox.retry_alert(first[0].id, T0 + dt.timedelta(seconds=10), "HTTP 500")
    assert alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=5), lease=60) == []
    assert alerting.outbox.next_alert_due() is not None
    (again,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=10), lease=60)
    assert again.id == first[0].id and again.attempts == 2
    alerting.outbox.mark_delivered(again.id, T0, "1700000000.000042")
    (follow_up,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=11), lease=60)
    assert follow_up.event is not None and follow_up.event.id == restored.id
    assert follow_up.thread_id == "1700000000.000042"
    alerting.outbox.mark_failed(follow_up.id, T0, "invalid_auth")
    rows = {r["event_id"]: r for r in alerting.outbox.outbox_rows()}
    assert rows[restored.id]["status"] == "failed"
    assert rows[restored.id]["last_error"] == "invalid_auth"


def test_notices_are_queued_on_every_channel(alerting: repo.Store) -> None:
    alerting.outbox.enqueue_notice({"kind": "registry_unreachable", "registry": "ghcr.io"}, T0)
    (item,) = alerting.outbox.claim_alerts(T0, lease=60)
    assert item.event is None and item.notice == {
        "kind": "registry_unreachable",
        "registry": "ghcr.io",
    }


def test_a_send_in_doubt_is_remembered_with_its_key_until_delivered(alerting: repo.Store) -> None:
    """begin_send commits ``sent_at`` and the key before the send; a crash (the lease running
    out) hands the row out again with both, so the next worker looks before sending again."""
    (event,) = alerting.apply_check(REPO, T0, [_change("1.0", K.MOVED)])
    (item,) = alerting.outbox.claim_alerts(T0, lease=60)
    assert item.sent_at is None and item.send_key is None
    alerting.outbox.begin_send(item.id, T0 + dt.timedelta(seconds=1), "k" * 32)
    # the worker died after that: the row comes back with what the send carried
    (again,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=61), lease=60)
    assert again.id == item.id and again.event == event
    assert again.sent_at == T0 + dt.timedelta(seconds=1) and again.send_key == "k" * 32
    # a later send keeps the first key (it must find the first send too) and its own start
    alerting.outbox.begin_send(again.id, T0 + dt.timedelta(seconds=62), "x" * 32)
    alerting.outbox.retry_alert(again.id, T0 + dt.timedelta(seconds=70), "HTTP 503")
    (third,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=70), lease=60)
    assert third.sent_at == T0 + dt.timedelta(seconds=62) and third.send_key == "k" * 32
    # Slack said no outright (429) and nothing earlier was in doubt: no lookup next time
    alerting.outbox.retry_alert(third.id, T0 + dt.timedelta(seconds=80), "HTTP 429", not_sent=True)
    (fourth,) = alerting.outbox.claim_alerts(T0 + dt.timedelta(seconds=80), lease=60)
    assert fourth.sent_at is None and fourth.send_key == "k" * 32
    assert alerting.outbox.last_remote_channel("slack") is None
    alerting.outbox.mark_delivered(fourth.id, T0, "1700000000.000007", "C0123ABCD")
    (row,) = alerting.outbox.outbox_rows()
    assert (row["status"], row["remote_id"], row["remote_channel"]) == (
        "delivered",
        "1700000000.000007",
        "C0123ABCD",
    )
    assert alerting.outbox.last_remote_channel("slack") == "C0123ABCD"
    assert alerting.outbox.last_remote_channel("email") is None
    # nothing about a delivered row changes any more
    alerting.outbox.begin_send(fourth.id, T0 + dt.timedelta(hours=1), "y" * 32)
    assert alerting.outbox.outbox_rows()[0]["sent_at"] == row["sent_at"]
