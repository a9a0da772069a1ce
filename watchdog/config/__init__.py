"""Configuration: YAML + ``${ENV}`` expansion + ``WATCHDOG_*`` overrides -> frozen, validated Settings.

``load()`` reports every problem at once, each naming its key (and the YAML line, or the
environment variable, it came from). Secrets are held in ``Secret`` so that printing a Settings
object never shows them. The settings are pydantic models declared once (``settings``), built from
the types in ``fields``; ``loading`` reads files and words the problems; ``output`` prints them back.
"""

from __future__ import annotations

from watchdog.config.fields import Secret, format_duration, parse_duration
from watchdog.config.loading import ENV_OVERRIDES, ENV_PREFIX, expand_env, from_mapping, load
from watchdog.config.output import SECRET_QUERY_KEYS, mask_url, masked, to_yaml
from watchdog.config.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_INCLUDE,
    ON_MOVE,
    SLACK_USER_RE,
    HookSettings,
    HttpSettings,
    IncidentSettings,
    IntegritySettings,
    RegistrySettings,
    RestoreSettings,
    Settings,
    SlackSettings,
    TagFilter,
    VaultSettings,
    WatchSettings,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_INCLUDE",
    "ENV_OVERRIDES",
    "ENV_PREFIX",
    "ON_MOVE",
    "SECRET_QUERY_KEYS",
    "SLACK_USER_RE",
    "HookSettings",
    "HttpSettings",
    "IncidentSettings",
    "IntegritySettings",
    "RegistrySettings",
    "RestoreSettings",
    "Secret",
    "Settings",
    "SlackSettings",
    "TagFilter",
    "VaultSettings",
    "WatchSettings",
    "expand_env",
    "format_duration",
    "from_mapping",
    "load",
    "mask_url",
    "masked",
    "parse_duration",
    "to_yaml",
]
