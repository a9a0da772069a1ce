"""``config check`` prints a config file that loads back to the same settings, secrets unseen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support.cli import run
from watchdog import config

ROOT = Path(__file__).resolve().parents[2]
FULL = """
database_url: postgresql+psycopg://wd:${PGPASS}@db/wd
interval: 5m
jitter: 250ms
http: {listen: "127.0.0.1:9000", api_token: "${TOKEN}"}
registries:
  - host: ghcr.io
    username: bot
    password: "${GHCR_TOKEN}"
    push_username: pusher
    push_password: "${PUSH:-unused-default}"
    max_concurrency: 4
    timeout: 2.5
  - host: localhost:5000
watches:
  - repository: ghcr.io/deephaven/server
    tags: {include: ['^v?\\d+\\.\\d+\\.\\d+$'], exclude: ['-rc']}
    on_move: restore
    interval: 90s
  - nginx
slack:
  token: "${SLACK_TOKEN}"
  channel: C0123
  signing_secret: "${SIGNING}"
  allowed_users: [U0123ABCD]
  unreachable_after: 1d
restore: {max_per_tag: 5, window: 2h}
"""
ENV = {
    "PGPASS": "pg-SECRET-1",
    "TOKEN": "api-SECRET-2",
    "GHCR_TOKEN": "ghcr-SECRET-3",
    "PUSH": "push-SECRET-4",
    "SLACK_TOKEN": "xoxb-SECRET-5",
    "SIGNING": "sign-SECRET-6",
    "WATCHDOG_HOOK_TOKEN": "hook-SECRET-7",
}


def round_trip(tmp_path: Path, text: str, env: dict[str, str]) -> tuple[str, config.Settings]:
    first = tmp_path / "first.yaml"
    first.write_text(text)
    printed = config.to_yaml(config.load(first, env))
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    return printed, config.load(again, env)


def same(a: config.Settings, b: config.Settings) -> None:
    """Equal settings, secrets compared by value; only the file they came from differs."""
    assert config.masked(a) == config.masked(b)
    b = b.model_copy()
    b._source = a.source
    assert a == b
    for x, y in [
        (a.database_url, b.database_url),
        (a.http.api_token, b.http.api_token),
        (a.slack.token, b.slack.token),
        (a.hooks.registry_token, b.hooks.registry_token),
        *((r.password, s.password) for r, s in zip(a.registries, b.registries, strict=True)),
        *(
            (r.push_password, s.push_password)
            for r, s in zip(a.registries, b.registries, strict=True)
        ),
    ]:
        assert x == y


def test_the_printout_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    printed, again = round_trip(tmp_path, FULL, ENV)
    for secret in ENV.values():
        assert secret not in printed
    data = yaml.safe_load(printed)
    assert data["database_url"] == "postgresql+psycopg://wd:${PGPASS}@db/wd"
    assert data["http"]["api_token"] == "${TOKEN}"
    assert data["registries"][0]["push_password"] == "${PUSH:-***}"
    assert data["hooks"]["registry_token"] == "${WATCHDOG_HOOK_TOKEN}"
    assert (data["interval"], data["jitter"], data["slack"]["unreachable_after"]) == (
        "5m",
        "0.25s",
        "1d",
    )
    assert data["registries"][0]["timeout"] == "2.5s" and data["watches"][1]["interval"] is None
    assert "use_docker_config" not in printed and "***" not in printed.splitlines()[1]
    first = config.load(tmp_path / "first.yaml", ENV)
    same(first, again)
    assert first.source != again.source and first != again


def test_secrets_written_as_text_print_masked_and_named(tmp_path: Path) -> None:
    text = (
        "database_url: postgresql+psycopg://wd:pw-TEXT@db/wd\n"
        "http: {api_token: token-TEXT}\n"
        "hooks: {dockerhub_token: 'pre-${X}'}\n"
        "watches: [a/b]\n"
    )
    printed, again = round_trip(tmp_path, text, {"X": "x-TEXT"})
    assert "TEXT" not in printed
    lines = printed.splitlines()
    assert lines[0].endswith("first.yaml: valid")
    assert lines[1].startswith("# *** stands for secrets the file gives as text")
    assert lines[1].endswith(": database_url, http.api_token, hooks.dockerhub_token")
    # fed back, they are the literal *** (said in the comment above): everything else is the same
    assert again.http.api_token == config.Secret("***")
    assert again.database_url.reveal() == "postgresql+psycopg://wd:***@db/wd"
    assert again.watches[0].name == "docker.io/a/b"


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        ("sqlite:///w.db", "sqlite:///w.db"),
        ("${NODB:-sqlite:///w.db}", "${NODB:-sqlite:///w.db}"),
        ("${NODB:-postgresql://u:pw@h/d}", "${NODB:-postgresql://u:***@h/d}"),
        ("postgresql://u:${PW:-pw}@h/d", "postgresql://u:***@h/d"),
        ("postgresql://${USER}:${PW}@h/${DB}", "postgresql://${USER}:${PW}@h/${DB}"),
    ],
)
def test_database_url(tmp_path: Path, url: str, printed: str) -> None:
    env = {"USER": "u", "PW": "pw", "DB": "d"}
    out, _ = round_trip(tmp_path, f"database_url: '{url}'\nwatches: [a/b]\n", env)
    assert yaml.safe_load(out)["database_url"] == printed
    assert "pw@" not in out


@pytest.mark.parametrize(
    "seconds",
    [0.0, 0.25, 0.1, 1.0, 2.5, 59.0, 60.0, 90.0, 3600.0, 86400.0, 1 / 3, 1e-05, 12345.678],
)
def test_durations_print_back_to_the_same_seconds(seconds: float) -> None:
    assert config.parse_duration(config.format_duration(seconds)) == seconds


def test_the_example_configs_round_trip(tmp_path: Path) -> None:
    for example in (ROOT / "config.example.yaml", ROOT / "deploy" / "compose" / "config.yaml"):
        _, again = round_trip(tmp_path, example.read_text(), {})
        same(config.load(example, {}), again)


def test_config_check_validates_like_scan(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("interval: 5m\n")
    for command in (("config", "check"), ("scan",)):
        proc = run(*command, "-c", str(cfg), cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout
        assert "watches: nothing to watch (add at least one repository)" in proc.stderr
    proc = run("config", "check", cwd=tmp_path, env={"WATCHDOG_CONFIG": ""})
    assert proc.returncode == 2 and "pass -c CONFIG or set WATCHDOG_CONFIG" in proc.stderr


def test_config_check_output_is_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FULL)
    proc = run("config", "check", "-c", str(cfg), env=ENV)
    assert proc.returncode == 0, proc.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(proc.stdout)
    again = run("config", "check", "-c", str(printed), env=ENV)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == proc.stdout.splitlines()[1:]
    as_json = run("config", "check", "--json", "-c", str(printed), env=ENV)
    assert json.loads(as_json.stdout) == config.masked(config.load(cfg, ENV))
