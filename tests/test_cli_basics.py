"""The command line as a user meets it: exit codes and one clear line, never a traceback.

These run the real program in a subprocess (``python -m watchdog``), as a user or a CI job would.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.cli import clean_env, run
from watchdog.store import tables


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


def test_help_and_version() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("run", "scan", "status", "history", "db", "config"):
        assert command in proc.stdout
    assert "Exit codes" in proc.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("tag-watchdog ")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("scan", "--bogus"),
        ("db",),
        ("history",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert "error:" in proc.stderr
    assert_no_traceback(proc)


def test_scan_without_config_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("scan", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pass -c CONFIG or set WATCHDOG_CONFIG" in proc.stderr
    assert_no_traceback(proc)


def test_bad_config_names_every_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("interval: often\nwatches:\n  - repository: ghcr.io/a/b\n    on_move: explode\n")
    proc = run("config", "check", "-c", str(cfg))
    assert proc.returncode == 2
    assert "interval (line 1)" in proc.stderr
    assert "watches[0].on_move (line 4)" in proc.stderr
    assert_no_traceback(proc)
    # the same config makes scan fail the same way, before touching anything
    proc = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert proc.returncode == 2 and "interval" in proc.stderr
    assert not (tmp_path / "watchdog.db").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run("config", "check", "-c", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr
    assert_no_traceback(proc)


def test_config_check_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "database_url: postgresql+psycopg://wd:${PGPW}@db.internal/wd\n"
        "http: {api_token: '${TOKEN}'}\n"
        "registries: [{host: ghcr.io, username: bot, password: '${GHCR}'}]\n"
        "slack: {webhook_url: '${SLACK}'}\n"
        "watches: [ghcr.io/deephaven/server]\n"
    )
    secrets = {
        "PGPW": "pg-MARKER-1",
        "TOKEN": "api-MARKER-2",
        "GHCR": "ghcr-MARKER-3",
        "SLACK": "https://hooks.slack.invalid/MARKER-4",
    }
    for args in (("config", "check"), ("config", "check", "--json")):
        proc = run(*args, "-c", str(cfg), env=secrets)
        assert proc.returncode == 0, proc.stderr
        for value in secrets.values():
            assert value not in proc.stdout + proc.stderr
        assert "ghcr.io/deephaven/server" in proc.stdout
    data = json.loads(proc.stdout)
    assert data["database_url"] == "postgresql+psycopg://wd:***@db.internal/wd"
    assert data["registries"][0]["password"] == "***"
    assert data["slack"]["webhook_url"] == "***"


def test_config_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("interval: 5m\nwatches: [nginx]\n")
    proc = run("config", "check", "--json", env={"WATCHDOG_CONFIG": str(cfg)})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["interval"] == 300
    assert data["watches"][0]["repository"] == "docker.io/library/nginx"


@pytest.mark.parametrize("ref", ["ghcr.io/deephaven/server", "UPPER/case:1", "a/b:-x", ""])
def test_history_bad_reference_exits_2(ref: str, tmp_path: Path) -> None:
    proc = run("history", ref, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("tag-watchdog: ")
    assert_no_traceback(proc)


def test_unreachable_database_exits_3_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://wd:pw-MARKER-5@127.0.0.1:9/wd"
    proc = run("status", env={"WATCHDOG_DATABASE_URL": url}, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "pw-MARKER-5" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") <= 2
    assert_no_traceback(proc)


def test_status_and_db_commands_on_a_fresh_sqlite(tmp_path: Path) -> None:
    env = {"WATCHDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    proc = run("db", "current", env=env)
    assert proc.returncode == 0 and "empty" in proc.stdout
    proc = run("db", "upgrade", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "upgraded" in proc.stdout
    again = run("db", "upgrade", env=env)
    assert again.returncode == 0 and "already at revision" in again.stdout
    proc = run("status", env=env)
    assert proc.returncode == 0 and "no tags recorded yet" in proc.stdout
    proc = run("status", "--json", env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


def test_status_and_history_without_a_database_say_so_and_create_nothing(tmp_path: Path) -> None:
    """Forgetting -c must not look like lost data: no silent new ./watchdog.db, no "no tags"."""
    for args in (("status",), ("history", "ghcr.io/acme/app:1.0.0")):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"no database at {tmp_path / 'watchdog.db'}" in proc.stderr
        assert "-c CONFIG" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_status_of_one_repository_says_when_only_others_are_recorded(tmp_path: Path) -> None:
    db_file = tmp_path / "w.db"
    env = {"WATCHDOG_DATABASE_URL": f"sqlite:///{db_file}"}
    assert run("db", "upgrade", env=env).returncode == 0
    engine = sa.create_engine(f"sqlite:///{db_file}")
    now = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            tables.tags.insert().values(
                repository="ghcr.io/acme/app",
                tag="1.0.0",
                recorded_digest="sha256:" + "a" * 64,
                current_digest="sha256:" + "a" * 64,
                state="ok",
                first_seen=now,
                last_checked=now,
                last_changed=now,
            )
        )
    engine.dispose()
    other = run("status", "--repository", "ghcr.io/acme/other", env=env)
    assert other.returncode == 0, other.stderr
    assert "no tags of ghcr.io/acme/other recorded (other repositories have some" in other.stdout
    mine = run("status", "--repository", "ghcr.io/acme/app", env=env)
    assert "ghcr.io/acme/app:1.0.0" in mine.stdout


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    """`tag-watchdog config check | head -1`: the pipe closes; exit 0, no "internal error"."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("watches: [" + ", ".join(f"'r.example/team/app{i}'" for i in range(400)) + "]\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "config", "check", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(None),
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)  # the first bytes, as head does
    proc.stdout.close()  # ...and it leaves
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "internal error" not in err and "Traceback" not in err
