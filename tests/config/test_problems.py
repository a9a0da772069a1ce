"""Every problem of a config at once, each with its key path and where it is (YAML line or the
WATCHDOG_* variable), in the config's words; and the settings models used directly by code."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchdog import config, errors, models


def problems_of(
    tmp_path: Path, text: str, env: dict[str, str] | None = None, **kw: bool
) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(errors.ConfigError) as info:
        config.load(path, env or {}, **kw)
    return info.value.problems


def test_an_invalid_repository_hides_no_other_problem_of_its_watch(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """watches:
  - repository: Not/Valid
    on_move: panic
    interval: 0s
    tags: {include: ['('], exclude: 5}
    bogus: 1
""",
    )
    assert found == [
        "watches[0].bogus (line 6): unknown key (known: check_timeout, interval, on_delete, on_move, repository, tags, vault)",
        "watches[0].repository (line 2): not a valid repository name: 'Not/Valid' (lower-case"
        " letters, digits and separators '.', '_', '__', '-', '/')",
        "watches[0].tags.include[0] (line 5): bad regular expression '(': missing ),"
        " unterminated subpattern at position 0",
        "watches[0].tags.exclude (line 5): expected a list of strings",
        "watches[0].on_move (line 3): must be one of alert, restore, got 'panic'",
        "watches[0].interval (line 4): must be at least 1s",
    ]


def test_an_invalid_registry_hides_none_of_its_other_problems(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "registries:\n  - host: https://ghcr.io\n    max_concurrency: 0\n    insecure: 1\n",
    )
    assert found == [
        "registries[0].host (line 2): give host[:port] without a scheme, got 'https://ghcr.io'",
        "registries[0].insecure (line 4): expected true or false, got 1",
        "registries[0].max_concurrency (line 3): must be between 1 and 256",
    ]


def test_duplicates_are_found_next_to_the_other_problems_of_the_item(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """registries:
  - {host: ghcr.io, password: p}
  - {host: GHCR.io, timeout: never}
watches:
  - {repository: ghcr.io/a/b, on_move: panic}
  - ghcr.io/a/b
""",
    )
    assert "registries[0].username (line 2): is required when a password is given" in found
    assert "registries[1].host (line 3): ghcr.io is configured twice" in found
    assert any(
        p.startswith("registries[1].timeout (line 3): 'never' is not a duration") for p in found
    )
    assert "watches[0].on_move (line 5): must be one of alert, restore, got 'panic'" in found
    assert "watches[1].repository (line 6): ghcr.io/a/b is watched twice" in found


def test_cross_field_rules_run_next_to_the_field_problems(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, "slack:\n  token: xoxb-1\n  lease: 0.5s\n  allowed_users: [bob]\n"
    )
    assert found == [
        "slack.allowed_users[0] (line 4): 'bob' is not a Slack user id (like U0123ABCD)",
        "slack.lease (line 3): must be at least 1s",
        "slack.channel (line 1): is required with slack.token",
        "slack.signing_secret (line 1): is required with slack.allowed_users",
    ]


@pytest.mark.parametrize(
    ("slack", "expected"),
    [
        ("{token: x}", ["slack.channel (line 1): is required with slack.token"]),
        (
            "{signing_secret: s}",
            [
                "slack.signing_secret (line 1): needs slack.token: buttons work in bot-token mode"
                " only",
                "slack.allowed_users (line 1): list the Slack user ids (U...) allowed to restore"
                " or accept from Slack",
            ],
        ),
        (
            "{token: x, channel: C1, allowed_users: [U0123ABCD]}",
            ["slack.signing_secret (line 1): is required with slack.allowed_users"],
        ),
        ("{webhook_url: ftp://x}", ["slack.webhook_url (line 1): must be an http(s) URL"]),
    ],
)
def test_half_a_slack_setup_is_refused(tmp_path: Path, slack: str, expected: list[str]) -> None:
    assert problems_of(tmp_path, f"slack: {slack}\n") == expected


def test_push_credentials_need_a_push_username(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "registries: [{host: a.io, push_password: p}]\n")
    assert found == [
        "registries[0].push_username (line 1): is required when a push_password is given"
    ]


def test_where_a_value_came_from(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "interval: 5m\nhttp:\n  listen: nowhere\nrestore: {window: '${NOPE}'}\nwatches: [1]\n",
        {"WATCHDOG_INTERVAL": "soon", "WATCHDOG_SLACK_CHANNEL": "C1", "WATCHDOG_SLACK_TOKEN": ""},
    )
    assert found == [
        "restore.window (line 4): environment variable NOPE is not set",
        "interval (from WATCHDOG_INTERVAL): 'soon' is not a duration (use e.g. 30s, 5m, 1h)",
        "http.listen (line 3): expected host:port, got 'nowhere'",
        "watches[0] (line 5): expected a mapping, got int",
    ]


def test_values_yaml_reads_as_dates(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        "registries: [{host: 2001-12-14}, {host: 2001-12-14}]\n"
        "watches: [2002-01-01]\ninterval: 2001-12-14\n",
    )
    assert found == [
        "interval (line 3): a date is not a duration (use e.g. 30s, 5m, 1h)",
        "registries[1].host (line 1): 2001-12-14 is configured twice",
        "watches[0] (line 2): expected a mapping, got date",
    ]


def test_keys_only_code_sets_are_unknown_in_a_file(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, "registries: [{host: a.io, use_docker_config: false}]\nsource: x\n"
    )
    assert found[0].startswith(
        "source (line 2): unknown key (known: certs_dir, check_timeout, database_url, hooks,"
    )
    assert found[1].startswith(
        "registries[0].use_docker_config (line 1): unknown key (known: ca_file, client_cert,"
    )
    assert "use_docker_config" not in found[1].split("known:")[1]
    assert "certs_dir" not in found[1].split("known:")[1]  # set from the top-level key


def test_no_watches_is_reported_with_the_other_problems_when_watches_are_required(
    tmp_path: Path,
) -> None:
    text = "interval: soon\nwatches: []\n"
    assert problems_of(tmp_path, text, require_watches=True) == [
        "interval (line 1): 'soon' is not a duration (use e.g. 30s, 5m, 1h)",
        "watches (line 2): nothing to watch (add at least one repository)",
    ]
    assert len(problems_of(tmp_path, text)) == 1
    with pytest.raises(errors.ConfigError, match="watches: nothing to watch"):
        config.load(None, {}, require_watches=True)


@pytest.mark.parametrize(
    "text",
    [
        "interval: null\njitter: ''\nregistries: []\nwatches:\n  - {repository: a/b, interval: null}\n",
        "slack: null\nhttp: {listen: ''}\nrestore: {}\nwatches: [{repository: a/b, tags: {include: []}}]\n",
    ],
)
def test_null_empty_string_and_empty_list_take_the_default(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    s = config.load(path, {})
    assert s.interval == 60 and s.jitter == 10 and s.http.listen == "127.0.0.1:9797"
    assert s.watches[0].interval is None and s.watches[0].tags.include == config.DEFAULT_INCLUDE


def test_derived_defaults() -> None:
    s = config.from_mapping(
        {
            "interval": "30s",
            "registries": [{"host": "localhost:5000"}, {"host": "a.io", "username": "u"}],
        },
        {},
    )
    assert s.jitter == 5  # interval/6, at most 10s
    local, other = s.registries
    assert local.insecure and local.scheme == "http" and local.use_docker_config
    assert not other.insecure and other.scheme == "https" and not other.use_docker_config
    assert (
        config.from_mapping({"registries": [{"host": "localhost:5000", "insecure": "no"}]}, {})
        .registries[0]
        .scheme
        == "https"
    )


def test_settings_built_by_code_are_validated_and_frozen() -> None:
    ref = models.ImageRef.parse("ghcr.io/a/b")
    watch = config.WatchSettings(repository=ref, on_move="restore")
    s = config.Settings(
        watches=(watch,), slack=config.SlackSettings(token=config.Secret("x"), channel="C1")
    )
    assert s.watches[0].name == "ghcr.io/a/b" and s.slack.token == config.Secret("x")
    assert s.source is None and s.registry("LOCALHOST:5000").insecure
    with pytest.raises(ValueError, match="frozen"):
        s.interval = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"is required with slack\.token"):
        config.SlackSettings(token=config.Secret("x"))
    with pytest.raises(ValueError, match="must be one of alert, restore"):
        config.WatchSettings(repository=ref, on_move="panic")
    copy = s.slack.model_copy(update={"channel": "C2"})
    assert copy.channel == "C2" and s.slack.channel == "C1"
    assert config.Settings() == config.Settings() and hash(config.RegistrySettings(host="a.io"))


def test_secret_behaves_like_before() -> None:
    secret = config.Secret("hunter2")
    assert secret.reveal() == "hunter2" and bool(secret) and not config.Secret("")
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert repr(config.Secret("")) == "Secret('')"
    assert secret == config.Secret("hunter2") and secret != config.Secret("other")
    assert secret != "hunter2" and hash(secret) == hash(config.Secret("hunter2"))
    s = config.from_mapping({"http": {"api_token": "hunter2"}}, {})
    assert "hunter2" not in repr(s) + str(s) + str(s.model_dump()) + s.model_dump_json()
    assert s.model_dump(mode="json")["http"]["api_token"] == "***"
    assert s.http.api_token == secret
