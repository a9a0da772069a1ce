"""SQLite held by another writer: every write of the store waits for the lock (within the
retry budget, ``db.SQLITE_BUSY_TIMEOUT_MS``) and then commits; beyond it, it fails with
``DatabaseUnavailable`` having written nothing, and the same write succeeds once the lock is gone.
Then the same under a real ``tag-watchdog run``: a short hold is waited for, a long one makes the
check an error (log line, metric, record kept) and the next check records the move, once.

The other writer is a real second connection on the same file, as an operator's ``sqlite3`` shell
or a backup script would be: ``BEGIN IMMEDIATE`` or ``BEGIN EXCLUSIVE``, a write, held, committed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn
from watchdog import config, errors, models
from watchdog.alerts import outbox
from watchdog.store import db, repo, tables

REPO = "127.0.0.1:5000/team/app"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


class Holder:
    """Another process's writer on ``path``: ``BEGIN <mode>``, one write, the lock held for
    ``seconds``, then COMMIT (so the daemon's read snapshot is stale afterwards, the hard case)."""

    def __init__(self, path: Path, mode: str, seconds: float) -> None:
        self.path = path
        self.mode = mode
        self.seconds = seconds
        self.held = threading.Event()
        self.released_at = 0.0
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute(f"BEGIN {self.mode}")
            conn.execute("UPDATE watches SET last_error = last_error")
            conn.execute("INSERT INTO watches (repository, consecutive_errors) VALUES ('x/y', 0)")
            self.held.set()
            time.sleep(self.seconds)
            conn.execute("COMMIT")
            self.released_at = time.monotonic()
        finally:
            conn.close()

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.held.wait(10), "the other writer did not get the lock"
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "busy.db"


@pytest.fixture
def store(db_file: Path) -> Iterator[repo.Store]:
    engine = db.create_engine(f"sqlite:///{db_file}")
    db.upgrade(engine)
    try:
        yield repo.Store(engine, channels=("slack",))
    finally:
        engine.dispose()


def _record(digest: str) -> models.TagRecord:
    return models.TagRecord(
        repository=REPO,
        tag="1.0.0",
        recorded_digest=DIGEST_A,
        current_digest=digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        state=models.TagState.OK if digest == DIGEST_A else models.TagState.DRIFTED,
        first_seen=T0,
        last_checked=T0,
        last_changed=T0,
    )


def _change(kind: models.EventKind, digest: str, old: str | None = None) -> models.Change:
    event = models.Event(
        repository=REPO, tag="1.0.0", kind=kind, at=T0, old_digest=old, new_digest=digest
    )
    return models.Change(repository=REPO, tag="1.0.0", record=_record(digest), event=event)


def _seed(store: repo.Store) -> None:
    """A baseline and one queued alert (a notice), so every write below has something to do."""
    store.apply_check(REPO, T0, [_change(models.EventKind.FIRST_SEEN, DIGEST_A)])
    store.outbox.enqueue_notice({"kind": "registry_unreachable", "registry": "127.0.0.1:5000"}, T0)


def _outbox_id(store: repo.Store) -> int:
    return int(store.outbox.outbox_rows()[0]["id"])


# Every public write of the store. Several read before they write (claim_alerts first of all):
# under a plain BEGIN, SQLite failed those at once, whatever busy_timeout said.
WRITES: dict[str, Callable[[repo.Store], object]] = {
    "apply_check": lambda s: s.apply_check(
        REPO, T0, [_change(models.EventKind.MOVED, DIGEST_B, DIGEST_A)]
    ),
    "apply_changes": lambda s: s.apply_changes(
        REPO, T0, [_change(models.EventKind.MOVED, DIGEST_B, DIGEST_A)]
    ),
    "record_watch_error": lambda s: s.record_watch_error(REPO, T0, "registry down"),
    "enqueue_notice": lambda s: s.outbox.enqueue_notice({"kind": "registry_recovered"}, T0),
    "claim_alerts": lambda s: s.outbox.claim_alerts(T0 + dt.timedelta(hours=1), lease=60),
    "mark_delivered": lambda s: s.outbox.mark_delivered(_outbox_id(s), T0, "1.2"),
    "mark_failed": lambda s: s.outbox.mark_failed(_outbox_id(s), T0, "refused"),
    "retry_alert": lambda s: s.outbox.retry_alert(_outbox_id(s), T0, "503"),
}


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(sa.select(t))]
            for t in (tables.tags, tables.events, tables.outbox)
        } | {
            "watches": [
                tuple(r)
                for r in conn.execute(
                    sa.select(tables.watches).where(tables.watches.c.repository == REPO)
                )
            ]
        }


# Every write under BEGIN IMMEDIATE; BEGIN EXCLUSIVE (the same lock for other connections in WAL
# mode) for the two that matter most: the check's and the outbox's.
CASES = [pytest.param(w, "IMMEDIATE", id=f"{w}-IMMEDIATE") for w in WRITES] + [
    pytest.param(w, "EXCLUSIVE", id=f"{w}-EXCLUSIVE") for w in ("apply_check", "claim_alerts")
]


@pytest.mark.parametrize(("write", "mode"), CASES)
def test_a_write_waits_for_another_writer_then_commits(
    store: repo.Store, db_file: Path, mode: str, write: str
) -> None:
    _seed(store)
    before = _snapshot(store.engine)
    with Holder(db_file, mode, 0.5) as holder:
        started = time.monotonic()
        WRITES[write](store)
        done = time.monotonic()
    # it waited for the other writer's COMMIT, then committed its own work
    assert done - started >= 0.4
    assert done >= holder.released_at > 0
    assert _snapshot(store.engine) != before


@pytest.mark.parametrize(("write", "mode"), CASES)
def test_a_lock_held_beyond_the_budget_fails_the_write_and_writes_nothing(
    db_file: Path, monkeypatch: pytest.MonkeyPatch, mode: str, write: str
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)  # the budget, shortened for the test
    engine = db.create_engine(f"sqlite:///{db_file}")
    db.upgrade(engine)
    store = repo.Store(engine, channels=("slack",))
    try:
        _seed(store)
        before = _snapshot(engine)
        with Holder(db_file, mode, 0.7):
            started = time.monotonic()
            with pytest.raises(errors.DatabaseUnavailable, match="database is locked") as caught:
                WRITES[write](store)
            waited = time.monotonic() - started
        assert 0.15 <= waited < 0.6  # it used its budget, and no more
        assert caught.value.temporary
        assert _snapshot(engine) == before  # nothing half-written
        WRITES[write](store)  # the lock is gone: the same write goes through
        assert _snapshot(engine) != before
    finally:
        engine.dispose()


def test_reads_go_on_while_another_process_holds_the_write_lock(
    store: repo.Store, db_file: Path
) -> None:
    """WAL: ``status``, ``history``, /readyz and the check's own reads do not wait for a writer."""
    _seed(store)
    with Holder(db_file, "EXCLUSIVE", 0.5):
        started = time.monotonic()
        store.ping()
        assert set(store.load_tags(REPO)) == {"1.0.0"}
        assert [e.kind for e in store.history(REPO, "1.0.0")] == [models.EventKind.FIRST_SEEN]
        assert store.outbox.pending_alerts() == 1
        assert time.monotonic() - started < 0.3


class _LockingSender:
    """A channel that takes the alert, after which another process grabs the write lock for
    ``hold`` seconds: the delivery has to be recorded under it."""

    name = "slack"

    def __init__(self, db_file: Path, hold: float) -> None:
        self.db_file = db_file
        self.hold = hold
        self.sent: list[object] = []
        self.holders: list[Holder] = []

    def send(self, message: object, thread_id: str | None) -> str:
        self.sent.append(message)
        holder = Holder(self.db_file, "EXCLUSIVE", self.hold)
        self.holders.append(holder.__enter__())
        return f"1.{len(self.sent)}"


async def test_a_delivery_is_recorded_after_a_lock_longer_than_the_budget_and_not_sent_again(
    db_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slack took the alert, then the lock is held past the write budget: the worker keeps
    trying to record the delivery while its lease holds, instead of leaving the row to be sent
    a second time when the lease runs out."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = db.create_engine(f"sqlite:///{db_file}")
    db.upgrade(engine)
    store = repo.Store(engine, channels=("slack",))
    try:
        _seed(store)
        sender = _LockingSender(db_file, 1.5)
        worker = outbox.Worker(store.outbox, {"slack": sender}, config.Settings(), lease=60)
        started = time.monotonic()
        assert await worker.run_once() == 1
        waited = time.monotonic() - started
        for holder in sender.holders:
            holder.__exit__()
        assert waited >= 1.2  # it outlasted the hold rather than giving up after 0.2 s
        assert store.outbox.pending_alerts() == 0
        [row] = store.outbox.outbox_rows()
        assert (row["status"], row["remote_id"]) == ("delivered", "1.1")
        # the lease running out sends nothing again
        later = outbox.Worker(
            store.outbox,
            {"slack": sender},
            config.Settings(),
            lease=60,
            clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
        assert await later.run_once() == 0
        assert len(sender.sent) == 1
    finally:
        engine.dispose()


# --- the daemon ----------------------------------------------------------------------------------


def _metric(port: int, name: str, **labels: str) -> float:
    """The sum of ``tag_watchdog_<name>`` samples carrying ``labels`` on the daemon's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"tag_watchdog_{name}{{") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _events(db_file: Path) -> list[tuple[str, str | None]]:
    """The event log read directly (WAL: readable while the other writer holds its lock)."""
    conn = sqlite3.connect(db_file, timeout=30)
    try:
        return [(k, d) for k, d in conn.execute("SELECT kind, new_digest FROM events ORDER BY id")]
    finally:
        conn.close()


def _report(figures: dict[str, object]) -> None:
    """Figures for docs/RELIABILITY.md: one JSON line appended to $WATCHDOG_SQLITE_BUSY_OUT."""
    out = os.environ.get("WATCHDOG_SQLITE_BUSY_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(figures) + "\n")


@pytest.mark.parametrize(
    ("mode", "hold", "within_budget"),
    [
        pytest.param("IMMEDIATE", 2.0, True, id="IMMEDIATE-2s-waited-for"),
        pytest.param("EXCLUSIVE", 8.0, False, id="EXCLUSIVE-8s-beyond-the-5s-budget"),
    ],
)
def test_run_under_another_writer_waits_or_errs_and_records_the_move_once(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    mode: str,
    hold: float,
    within_budget: bool,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="a")
    db_file = tmp_path / "w.db"
    port = free_port()
    cfg = tmp_path / "c.yaml"
    slack = SlackStandIn().start()
    cfg.write_text(
        f"database_url: sqlite:///{db_file}\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n"
        f"slack: {{webhook_url: '{slack.webhook_url}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    name = f"{registry.host}/{repo}"
    log = (tmp_path / "daemon.log").open("w+")
    daemon = start_daemon(cfg, tmp_path, log=log)
    try:
        wait_for(lambda: http_status(port) == 200, what="the daemon's first check")
        errors_before = _metric(port, "checks_total", registry=registry.host, result="error")
        checks_before = _metric(port, "checks_total", registry=registry.host)
        with Holder(db_file, mode, hold):
            # the release is overwritten while the other process holds the write lock
            moved = pusher.image(repo, "1.0.0", seed="overwritten")
            if not within_budget:
                # the check that saw the move runs out of its budget while the lock is held (it
                # is counted once its error is recorded, after the release: that write waits too)
                wait_for(
                    lambda: "database is locked" in (tmp_path / "daemon.log").read_text(),
                    timeout=hold,
                    what="a check to fail on the lock",
                )
                # the record is kept, nothing false was written
                assert _events(db_file) == [("first_seen", release.digest)]
        wait_for(
            lambda: any("moved" in m.get("text", "") for m in slack.messages()),
            timeout=15,
            what="the move alert after the lock was released",
        )
        time.sleep(2.5)  # more checks after the release: none may record or alert it again
        failed = _metric(port, "checks_total", registry=registry.host, result="error")
        checks = _metric(port, "checks_total", registry=registry.host)
        drifted = _metric(port, "tags_drifted", repository=name)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        slack.stop()
        log.seek(0)
        err = log.read()
        log.close()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    history = run("history", f"{name}:1.0.0", "--json", "-c", str(cfg), cwd=tmp_path)
    events = [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)]
    assert events == [("first_seen", release.digest), ("moved", moved.digest)]
    assert sum("moved" in m.get("text", "") for m in slack.messages()) == 1
    assert drifted == 1
    errored = int(failed - errors_before)
    if within_budget:
        assert errored == 0, err  # waited for, not failed
        assert "database is locked" not in err
    else:
        assert errored >= 1
        assert "check_failed" in err and "database is locked" in err
    _report(
        {
            "fault": f"sqlite-{mode.lower()}-{hold:g}s",
            "checks": int(checks - checks_before),
            "errors": errored,
            "events": events,
            "moved_alerts": sum("moved" in m.get("text", "") for m in slack.messages()),
        }
    )
