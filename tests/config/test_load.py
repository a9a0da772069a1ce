"""Config loading: YAML, ${ENV} expansion, WATCHDOG_* overrides, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog import config, errors


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_full_example(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
database_url: postgresql+psycopg://wd:${PGPASS}@db/wd
interval: 5m
jitter: 30s
http: {listen: "127.0.0.1:9000", api_token: "${TOKEN}"}
registries:
  - host: ghcr.io
    username: bot
    password: "${GHCR_TOKEN}"
    max_concurrency: 4
  - host: localhost:5000
watches:
  - repository: ghcr.io/deephaven/server
    tags: {include: ['^v?\\d+\\.\\d+\\.\\d+$'], exclude: ['-rc']}
    on_move: restore
  - nginx
slack: {webhook_url: "${SLACK}"}
restore: {max_per_tag: 5, window: 2h}
""",
    )
    env = {
        "PGPASS": "pg-secret",
        "TOKEN": "api-secret",
        "GHCR_TOKEN": "ghcr-secret",
        "SLACK": "https://hooks.example/T/B/x",
    }
    s = config.load(path, env)
    assert s.interval == 300 and s.jitter == 30
    assert s.database_url.reveal() == "postgresql+psycopg://wd:pg-secret@db/wd"
    assert s.http.port == 9000 and s.http.host == "127.0.0.1"
    ghcr = s.registry("ghcr.io")
    assert ghcr.username == "bot" and ghcr.password is not None
    assert ghcr.password.reveal() == "ghcr-secret" and not ghcr.insecure
    assert ghcr.max_concurrency == 4 and not ghcr.use_docker_config
    assert s.registry("localhost:5000").insecure  # loopback defaults to plain HTTP
    assert s.registry("127.0.0.1:5001").insecure  # even when not configured
    assert not s.registry("quay.io").insecure
    server, nginx = s.watches
    assert server.name == "ghcr.io/deephaven/server" and server.on_move == "restore"
    assert server.tags.matches("0.15.0") and not server.tags.matches("0.16.0-rc")
    assert nginx.name == "docker.io/library/nginx" and nginx.on_move == "alert"
    assert s.restore.max_per_tag == 5 and s.restore.window == 7200
    # secrets never show
    text = repr(s) + str(config.masked(s))
    for secret in env.values():
        assert secret not in text
    assert config.masked(s)["database_url"] == "postgresql+psycopg://wd:***@db/wd"


def test_every_problem_reported_at_once_with_key_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """interval: soon
registries:
  - host: https://ghcr.io
    max_concurrency: -1
watches:
  - repository: Not/Valid
  - repository: ghcr.io/a/b
    on_move: panic
    tags: {include: ['(']}
bogus: 1
""",
    )
    with pytest.raises(errors.ConfigError) as info:
        config.load(path, {})
    problems = "\n".join(info.value.problems)
    assert "interval (line 1)" in problems
    assert "registries[0].host" in problems and "without a scheme" in problems
    assert "watches[0].repository" in problems
    assert "watches[1].on_move (line 8)" in problems
    assert "watches[1].tags.include" in problems
    assert "bogus (line 10): unknown key" in problems
    assert len(info.value.problems) >= 6
    assert str(path) in str(info.value)


def test_unset_env_var_is_a_problem_and_default_syntax_works(tmp_path: Path) -> None:
    path = write(tmp_path, "database_url: ${NOPE}\njitter: ${J:-3s}\n")
    with pytest.raises(errors.ConfigError, match="NOPE is not set"):
        config.load(path, {})
    path = write(tmp_path, "jitter: ${J:-3s}\n")
    assert config.load(path, {}).jitter == 3


def test_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "interval: 60s\n")
    s = config.load(
        path,
        {
            "WATCHDOG_INTERVAL": "15s",
            "WATCHDOG_DATABASE_URL": "sqlite:///x.db",
            "WATCHDOG_HTTP_LISTEN": "127.0.0.1:1234",
        },
    )
    assert s.interval == 15
    assert s.database_url.reveal() == "sqlite:///x.db"
    assert s.http.port == 1234


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[1, 2", "YAML syntax error at line"),
        ("- a\n- b\n", "expected a mapping"),
        ("watches: {a: 1}\n", "watches"),
        ("slack: {token: x}\n", "slack.channel"),
        ("database_url: mysql://x\n", "database_url"),
        ("http: {listen: nowhere}\n", "http.listen"),
        ("registries: [{host: a.io, password: p}]\n", "registries[0].username"),
        ("watches: [ghcr.io/a/b, ghcr.io/a/b]\n", "watched twice"),
        ("watches: [ghcr.io/a/b:1.0.0]\n", "without a tag"),
        ("restore: {max_per_tag: 0}\n", "restore.max_per_tag"),
        ("interval: 0s\n", "at least 1s"),
    ],
)
def test_bad_configs(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        config.load(write(tmp_path, text), {})
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml", {})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), ("1d", 86400), (45, 45), ("2", 2)],
)
def test_durations(value: object, seconds: float) -> None:
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "-1s", True, "1w"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(value)


@pytest.mark.parametrize(
    ("tag", "kept"),
    [
        ("1.2.3", True),
        ("v1.2.3", True),
        ("1.2.3-rc.1", True),
        ("0.15.0", True),
        ("latest", False),
        ("main", False),
        ("1.2", False),
        ("sha-abc123", False),
        ("sha256-" + "a" * 64 + ".sig", False),
        ("feature-x", False),
    ],
)
def test_default_tag_filter(tag: str, kept: bool) -> None:
    assert config.TagFilter().matches(tag) is kept


def test_referrer_tags_skipped_even_when_included() -> None:
    f = config.TagFilter(include=(".*",))
    assert f.matches("latest")
    assert not f.matches("sha256-" + "a" * 64)


def test_mask_url() -> None:
    assert (
        config.mask_url("postgresql+psycopg://u:p%40ss@h:5432/d")
        == "postgresql+psycopg://u:***@h:5432/d"
    )
    assert config.mask_url("sqlite:///watchdog.db") == "sqlite:///watchdog.db"
