"""`tag-watchdog scan/status/history/run` as a user runs them, against a real registry.

The program runs in a subprocess, exactly as installed; the registry is Debian's docker-registry.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import clean_env, run, start_daemon, wait_for
from tests.support.registry import free_port


def write_config(path: Path, host: str, repository: str, *, db: str, extra: str = "") -> Path:
    path.write_text(
        f"database_url: {db}\n"
        f"interval: 1s\njitter: 0s\n"
        f"{extra}"
        f"watches:\n  - repository: {host}/{repository}\n"
    )
    return path


def test_scan_records_then_exits_1_on_a_move_and_history_shows_it(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    with images.Pusher(server.url) as pusher:
        release = pusher.index("deephaven/server", "0.15.0", seed="release")
        pusher.image("deephaven/server", "0.14.0", seed="old")
        pusher.image("deephaven/server", "latest", seed="nightly")
    cfg = write_config(
        tmp_path / "c.yaml", server.host, "deephaven/server", db=f"sqlite:///{tmp_path / 'w.db'}"
    )
    ref = f"{server.host}/deephaven/server:0.15.0"

    first = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 tags checked, 2 first_seen" in first.stdout

    status = run("status", "--json", "-c", str(cfg), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = {r["tag"]: r for r in json.loads(status.stdout)}
    assert set(rows) == {"0.14.0", "0.15.0"}
    assert rows["0.15.0"]["recorded_digest"] == release.digest
    assert rows["0.15.0"]["state"] == "ok"

    # the accidental re-release overwrites 0.15.0
    with images.Pusher(server.url) as pusher:
        rebuilt = pusher.index("deephaven/server", "0.15.0", seed="rebuild")
    moved = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert moved.returncode == 1, moved.stderr
    assert f"MOVED     {ref} {release.digest} -> {rebuilt.digest}" in moved.stdout
    assert "DRIFT" in moved.stdout

    # still drifted on the next scan: still exit 1, but no second event
    again = run("scan", "--json", "-c", str(cfg), cwd=tmp_path)
    assert again.returncode == 1
    data = json.loads(again.stdout)
    assert data["drift"] is True and data["complete"] is True and data["exit_code"] == 1
    (watch,) = data["watches"]
    assert watch["events"] == [] and watch["tags_checked"] == 2
    assert [d["tag"] for d in watch["drifted"]] == ["0.15.0"]
    assert watch["drifted"][0]["current_digest"] == rebuilt.digest
    assert watch["drifted"][0]["rechecked"] is True  # asked the registry this time

    history = run("history", ref, "-c", str(cfg), cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    assert release.digest in history.stdout and rebuilt.digest in history.stdout
    assert "moved" in history.stdout and "linux/amd64" in history.stdout
    events = json.loads(run("history", ref, "--json", "-c", str(cfg), cwd=tmp_path).stdout)
    assert [e["kind"] for e in events] == ["first_seen", "moved"]
    assert events[1]["old_digest"] == release.digest
    assert events[1]["new_digest"] == rebuilt.digest
    assert sorted(events[1]["detail"]["changed_platforms"]) == sorted(rebuilt.children)

    status = run("status", "-c", str(cfg), cwd=tmp_path)
    assert "drifted" in status.stdout and "0.15.0" in status.stdout


def test_scan_exits_3_when_the_registry_is_down_and_changes_nothing(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    with images.Pusher(server.url) as pusher:
        pusher.image("team/app", "1.0.0", seed="a")
    cfg = write_config(
        tmp_path / "c.yaml", server.host, "team/app", db=f"sqlite:///{tmp_path / 'w.db'}"
    )
    assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 0
    before = json.loads(run("status", "--json", "-c", str(cfg), cwd=tmp_path).stdout)
    server.stop()
    down = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert down.returncode == 3
    assert "could not check" in down.stdout
    assert "Traceback" not in down.stderr
    after = json.loads(run("status", "--json", "-c", str(cfg), cwd=tmp_path).stdout)
    assert after == before
    history = json.loads(
        run(
            "history", f"{server.host}/team/app:1.0.0", "--json", "-c", str(cfg), cwd=tmp_path
        ).stdout
    )
    assert [e["kind"] for e in history] == ["first_seen"]


def test_scan_during_an_outage_shows_the_recorded_drift_marked_not_rechecked(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    with images.Pusher(server.url) as pusher:
        release = pusher.image("team/app", "1.0.0", seed="a")
        pusher.image("team/app", "1.1.0", seed="b")
    cfg = write_config(
        tmp_path / "c.yaml", server.host, "team/app", db=f"sqlite:///{tmp_path / 'w.db'}"
    )
    assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 0
    with images.Pusher(server.url) as pusher:
        rebuilt = pusher.image("team/app", "1.0.0", seed="rebuilt")
    assert run("scan", "-c", str(cfg), cwd=tmp_path).returncode == 1  # the drift is recorded
    server.stop()

    down = run("scan", "--json", "-c", str(cfg), cwd=tmp_path)
    assert down.returncode == 3, down.stderr  # could not complete; no drift confirmed now
    data = json.loads(down.stdout)
    assert data["drift"] is False and data["complete"] is False
    (watch,) = data["watches"]
    assert watch["error"] and "cannot connect" in watch["error"]
    (drifted,) = watch["drifted"]  # not `[]`: the record knows 1.0.0 is drifted
    assert drifted["tag"] == "1.0.0" and drifted["state"] == "drifted"
    assert drifted["recorded_digest"] == release.digest
    assert drifted["current_digest"] == rebuilt.digest
    assert drifted["rechecked"] is False
    # (the text lines of the same result: tests/test_views.py, without another slow scan)


def test_run_daemon_detects_a_move_serves_metrics_and_stops_cleanly(
    tmp_path: Path, server: support_registry.RegistryServer
) -> None:
    with images.Pusher(server.url) as pusher:
        release = pusher.index("deephaven/server", "0.15.0", seed="release")
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        server.host,
        "deephaven/server",
        db=f"sqlite:///{tmp_path / 'w.db'}",
        extra=f"http: {{listen: '127.0.0.1:{port}'}}\n",
    )
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "-c", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> httpx.Response | None:
        try:
            return httpx.get(base + path, timeout=2)
        except httpx.TransportError:
            return None

    try:
        ready = wait_for(lambda: (r := get("/readyz")) is not None and r.status_code == 200 and r)
        assert ready.json()["status"] == "ready"
        assert get("/healthz").json() == {"status": "alive"}  # type: ignore[union-attr]
        with images.Pusher(server.url) as pusher:
            rebuilt = pusher.index("deephaven/server", "0.15.0", seed="rebuild")
        name = f'repository="{server.host}/deephaven/server"'
        metrics_text = wait_for(
            lambda: (
                (r := get("/metrics")) is not None
                and f"tag_watchdog_tag_moves_total{{{name}}} 1.0" in r.text
                and r.text
            )
        )
        assert f"tag_watchdog_tags_drifted{{{name}}} 1.0" in metrics_text
        assert "tag_watchdog_drifted_tag_info{" in metrics_text and 'tag="0.15.0"' in metrics_text
        assert "sha256:" not in metrics_text  # never a digest in a label
        assert 'tag_watchdog_registry_requests_total{code="200",method="HEAD"' in metrics_text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "signal_received signal=SIGTERM" in err and "stopped" in err
    assert "tag_moved" in err and rebuilt.digest in err
    assert "Traceback" not in err
    history = run(
        "history", f"{server.host}/deephaven/server:0.15.0", "--json", "-c", str(cfg), cwd=tmp_path
    )
    kinds = [e["kind"] for e in json.loads(history.stdout)]
    assert kinds == ["first_seen", "moved"]
    assert json.loads(history.stdout)[0]["new_digest"] == release.digest


def test_run_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cfg = write_config(
            tmp_path / "c.yaml",
            "127.0.0.1:1",
            "a/b",
            db=f"sqlite:///{tmp_path / 'w.db'}",
            extra=f"http: {{listen: '127.0.0.1:{port}'}}\n",
        )
        proc = run("run", "-c", str(cfg), cwd=tmp_path)
    assert proc.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_refuses_an_outdated_schema_and_db_upgrade_fixes_it(
    tmp_path: Path, next_release: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchdog import cli

    db_url = f"sqlite:///{tmp_path / 'w.db'}"
    cfg = write_config(tmp_path / "c.yaml", "127.0.0.1:1", "a/b", db=db_url)
    # this release's schema, made by the real program (unpatched, in its own process)
    made = run("db", "upgrade", "-c", str(cfg), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    # ...then the next release (whose migrations end at `next_release`) meets it
    assert cli.main(["run", "-c", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "tag-watchdog db upgrade -c CONFIG" in err and next_release in err
    assert cli.main(["scan", "-c", str(cfg)]) == 3  # scan refuses it too: never silently migrated
    capsys.readouterr()
    assert cli.main(["db", "upgrade", "-c", str(cfg)]) == 0
    assert f"-> {next_release}" in capsys.readouterr().out
    assert cli.main(["db", "current", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == next_release


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path / "c.yaml",
        "127.0.0.1:1",
        "a/b",
        db=f"sqlite:///{tmp_path / 'w.db'}",
        extra=f"http: {{listen: '127.0.0.1:{port}'}}\n",
    )
    first = start_daemon(cfg, tmp_path)
    try:
        wait_for(
            lambda: (
                httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                if _port_open(port)
                else False
            )
        )
        other = tmp_path / "other.yaml"
        other.write_text(cfg.read_text().replace(str(port), str(free_port())))
        second = run("run", "-c", str(other), cwd=tmp_path)
        assert second.returncode == 3
        assert f"another tag-watchdog daemon (pid {first.pid}) already runs on" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    # the lock dies with its holder: a new daemon may start (here: refused only by the port test)
    third = start_daemon(cfg, tmp_path)
    try:
        wait_for(lambda: _port_open(port))
        third.kill()  # SIGKILL: no clean release, the kernel drops the lock
        third.communicate(timeout=30)
        fourth = start_daemon(cfg, tmp_path)
        wait_for(lambda: _port_open(port))
        fourth.send_signal(signal.SIGTERM)
        _, err = fourth.communicate(timeout=30)
        assert fourth.returncode == 0, err
    finally:
        if third.poll() is None:
            third.kill()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_during_a_check_lets_it_finish(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Any,
) -> None:
    release = pusher.image(repo, "1.0.0", seed="a")
    proxy = make_fault_proxy(registry)
    proxy.add("HEAD", f"/v2/{repo}/manifests/", delay=1.5)  # every check spends 1.5 s in a HEAD
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1h\n"
        f"http: {{listen: '127.0.0.1:{free_port()}'}}\nwatches: ['{proxy.host}/{repo}']\n"
    )
    proc = start_daemon(cfg, tmp_path)
    try:
        wait_for(lambda: proxy.in_flight, what="a check under way (its HEAD held by the proxy)")
        proc.send_signal(signal.SIGTERM)  # the check is waiting for its HEAD
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
    # the check that was running when the signal came finished and recorded the tag
    history = run("history", f"{proxy.host}/{repo}:1.0.0", "--json", "-c", str(cfg), cwd=tmp_path)
    assert [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)] == [
        ("first_seen", release.digest)
    ]
