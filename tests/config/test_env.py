"""Every WATCHDOG_* override, by name, and the reference docs listing every key and variable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from watchdog import config, errors

ROOT = Path(__file__).resolve().parents[2]

# variable, value, where the setting lands, what it becomes
OVERRIDES: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("WATCHDOG_DATABASE_URL", "sqlite:///x.db", ("database_url",), config.Secret("sqlite:///x.db")),
    ("WATCHDOG_INTERVAL", "15s", ("interval",), 15.0),
    ("WATCHDOG_JITTER", "2s", ("jitter",), 2.0),
    ("WATCHDOG_HTTP_LISTEN", "127.0.0.1:1234", ("http", "listen"), "127.0.0.1:1234"),
    ("WATCHDOG_API_TOKEN", "api-t", ("http", "api_token"), config.Secret("api-t")),
    (
        "WATCHDOG_SLACK_WEBHOOK_URL",
        "https://hooks.example/x",
        ("slack", "webhook_url"),
        config.Secret("https://hooks.example/x"),
    ),
    ("WATCHDOG_SLACK_TOKEN", "xoxb-t", ("slack", "token"), config.Secret("xoxb-t")),
    ("WATCHDOG_SLACK_CHANNEL", "C0123", ("slack", "channel"), "C0123"),
    (
        "WATCHDOG_SLACK_SIGNING_SECRET",
        "sign-t",
        ("slack", "signing_secret"),
        config.Secret("sign-t"),
    ),
    ("WATCHDOG_HOOK_TOKEN", "hook-t", ("hooks", "registry_token"), config.Secret("hook-t")),
    (
        "WATCHDOG_DOCKERHUB_HOOK_TOKEN",
        "hub-t",
        ("hooks", "dockerhub_token"),
        config.Secret("hub-t"),
    ),
    ("WATCHDOG_CERTS_DIR", "/nonexistent/certs.d", ("certs_dir",), "/nonexistent/certs.d"),
]
# what the rules want next to the variable under test (a token needs a channel, ...)
COMPANIONS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "WATCHDOG_SLACK_TOKEN": ({"WATCHDOG_SLACK_CHANNEL": "C1"}, {}),
    "WATCHDOG_SLACK_SIGNING_SECRET": (
        {"WATCHDOG_SLACK_TOKEN": "x", "WATCHDOG_SLACK_CHANNEL": "C1"},
        {"slack": {"allowed_users": ["U0123ABCD"]}},
    ),
}
FILE = {
    "database_url": "sqlite:///file.db",
    "interval": "1h",
    "jitter": "1s",
    "http": {"listen": "127.0.0.1:1", "api_token": "file"},
    "slack": {"channel": "file"},
    "hooks": {"registry_token": "file", "dockerhub_token": "file"},
    "watches": ["a/b"],
}


def test_the_table_names_every_override() -> None:
    assert {name for name, *_ in OVERRIDES} == {
        config.ENV_PREFIX + suffix for suffix in config.ENV_OVERRIDES
    }


@pytest.mark.parametrize(("name", "value", "key", "expected"), OVERRIDES)
def test_each_override_beats_the_file(
    tmp_path: Path, name: str, value: str, key: tuple[str, ...], expected: Any
) -> None:
    more_env, more_file = COMPANIONS.get(name, ({}, {}))
    env = {**more_env, name: value}
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({**FILE, "slack": {**FILE["slack"], **more_file.get("slack", {})}})
    )
    got: Any = config.load(path, env)
    for part in key:
        got = getattr(got, part)
    assert got == expected
    # the override also sets a key the file leaves out
    got = config.from_mapping(more_file, env)
    for part in key:
        got = getattr(got, part)
    assert got == expected


def test_a_bad_override_is_named_by_its_variable() -> None:
    with pytest.raises(errors.ConfigError) as info:
        config.from_mapping({"http": {"listen": "127.0.0.1:1"}}, {"WATCHDOG_HTTP_LISTEN": "x"})
    assert info.value.problems == [
        "http.listen (from WATCHDOG_HTTP_LISTEN): expected host:port, got 'x'"
    ]


def _keys(model: type[pydantic.BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if name in getattr(model, "internal", ()):
            continue
        sub = next(
            (
                t
                for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
                if isinstance(t, type) and issubclass(t, pydantic.BaseModel)
            ),
            None,
        )
        out += _keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return out


def test_docs_list_every_key_and_variable() -> None:
    docs = (ROOT / "docs" / "CONFIG.md").read_text()
    keys = _keys(config.Settings, "")
    assert "registries.host" in keys and "watches.tags.include" in keys and "slack.lease" in keys
    for key in keys:
        parts = key.replace("registries.", "registries[].").replace("watches.", "watches[].")
        last = parts.rsplit(".", 1)[-1]
        assert f"`{parts}`" in docs or re.search(rf"`{re.escape(parts)}`|, `{last}`", docs), key
    for suffix in config.ENV_OVERRIDES:
        assert f"`{config.ENV_PREFIX}{suffix}`" in docs, suffix
