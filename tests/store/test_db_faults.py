"""Database faults: PostgreSQL stopped and started again under a running daemon; SQLite held by
another writer."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn


def _cluster() -> list[str]:
    versions = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir() if p.name.isdigit())
    return [versions[-1], "main"]


@pytest.mark.postgres
def test_postgres_restarted_under_run_loses_and_doubles_nothing(
    tmp_path: Path,
    pg_url: str,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="a")
    slack = SlackStandIn().start()
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: '{pg_url}'\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n"
        f"slack: {{webhook_url: '{slack.webhook_url}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    daemon = start_daemon(cfg, tmp_path)
    stopped = False
    try:
        wait_for(lambda: http_status(port) == 200, what="the daemon's first check")
        subprocess.run(["pg_ctlcluster", *_cluster(), "stop", "-m", "fast"], check=True)
        stopped = True
        wait_for(lambda: http_status(port) == 503, what="/readyz to report the database down")
        # the release is overwritten while the database is down
        moved = pusher.image(repo, "1.0.0", seed="overwritten")
        time.sleep(2.5)  # a couple of checks fail against the stopped database meanwhile
        subprocess.run(["pg_ctlcluster", *_cluster(), "start"], check=True)
        stopped = False
        wait_for(lambda: http_status(port) == 200, timeout=30, what="/readyz after the restart")
        wait_for(
            lambda: any("moved" in m.get("text", "") for m in slack.messages()),
            timeout=30,
            what="the move alert after the restart",
        )
    finally:
        if stopped:
            subprocess.run(["pg_ctlcluster", *_cluster(), "start"], check=False)
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
        slack.stop()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    assert "check_not_claimed" in err or "check_failed" in err  # the outage was seen and logged
    history = run(
        "history",
        f"{registry.host}/{repo}:1.0.0",
        "--json",
        env={"WATCHDOG_DATABASE_URL": pg_url},
        cwd=tmp_path,
    )
    events = [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)]
    assert events == [("first_seen", release.digest), ("moved", moved.digest)]
    assert sum("moved" in m.get("text", "") for m in slack.messages()) == 1


def _hold_write_lock(
    path: Path, seconds: float, held: threading.Event, release: threading.Event
) -> None:
    """Another process's writer (an operator's sqlite3 shell, a backup): BEGIN IMMEDIATE, a
    write, held for ``seconds`` or until ``release`` is set, then committed."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE watches SET last_error = last_error")
        held.set()
        release.wait(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _history(tmp_path: Path, cfg: Path, ref: str) -> list[tuple[str, str | None]]:
    out = run("history", ref, "--json", "-c", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return [(e["kind"], e["new_digest"]) for e in json.loads(out.stdout)]


@pytest.mark.parametrize(
    ("hold", "first_exit"),
    [
        (1.5, 1),  # within the busy timeout: the scan waits, then records the move (exit 1: drift)
        # beyond it (held until the scan has ended, however slowly it started): the scan could
        # not complete, nothing recorded, nothing false
        (None, 3),
    ],
)
def test_sqlite_busy_under_another_writer_is_waited_for_and_loses_nothing(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    hold: float | None,
    first_exit: int,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="a")
    db_file = tmp_path / "w.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite:///{db_file}\nwatches: ['{registry.host}/{repo}']\n")
    ref = f"{registry.host}/{repo}:1.0.0"
    assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 0
    moved = pusher.image(repo, "1.0.0", seed="overwritten")

    held, let_go = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db_file, hold or 120.0, held, let_go))
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        first = run("scan", "-c", str(cfg), cwd=tmp_path)
        waited = time.monotonic() - started
    finally:
        let_go.set()
        holder.join()
    assert first.returncode == first_exit, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    if hold is not None:
        assert waited >= hold * 0.8  # it waited for the lock rather than failing at once
        assert _history(tmp_path, cfg, ref) == [
            ("first_seen", release.digest),
            ("moved", moved.digest),
        ]
    else:
        assert "database is locked" in first.stderr + first.stdout
        assert _history(tmp_path, cfg, ref) == [("first_seen", release.digest)]
        # the lock is gone: the next scan records the move, once
        assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 1
        assert _history(tmp_path, cfg, ref) == [
            ("first_seen", release.digest),
            ("moved", moved.digest),
        ]
    # and a further scan finds nothing new
    assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 1  # still drifted
    assert len(_history(tmp_path, cfg, ref)) == 2
