"""Config fuzzing: whatever the YAML holds, loading gives Settings or a ConfigError, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog import config, errors

KEYS = sorted(
    {
        "database_url",
        "interval",
        "jitter",
        "http",
        "registries",
        "watches",
        "slack",
        "restore",
        "hooks",
        "listen",
        "api_token",
        "host",
        "username",
        "password",
        "insecure",
        "max_concurrency",
        "timeout",
        "repository",
        "tags",
        "include",
        "exclude",
        "on_move",
        "webhook_url",
        "token",
        "channel",
        "max_per_tag",
        "window",
        "registry_token",
        "dockerhub_token",
        "push_username",
        "push_password",
        "signing_secret",
        "allowed_users",
        "lease",
        "unreachable_after",
        "use_docker_config",
        "bogus",
    }
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.dates(),  # YAML reads 2001-12-14 as a date
    st.binary(max_size=5),  # and !!binary as bytes
    st.sampled_from(
        [
            "30s",
            "5m",
            "ghcr.io/a/b",
            "${UNSET}",
            "${X:-1h}",
            "(",
            "localhost:5000",
            "alert",
            "restore",
            "postgresql+psycopg://u:p@h/d",
            "^v?\\d+$",
            "U0123ABCD",
            "https://hooks.example/x",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(0, 3)), children, max_size=5),
    ),
    max_leaves=25,
)
documents = st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values, max_size=8))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_from_mapping_never_crashes(raw: Any) -> None:
    try:
        result = config.from_mapping(raw, {"X": "2s"})
    except errors.ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert exc.exit_code == 2
        # pydantic's own wording never reaches the user: every problem is in the config's words
        for problem in exc.problems:
            assert "Input should" not in problem and "pydantic" not in problem, problem
    else:
        assert isinstance(result, config.Settings)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_load_of_arbitrary_text_never_crashes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        config.load(path, {})
    except errors.ConfigError as exc:
        assert exc.problems
