"""From a YAML file (and the environment) to Settings: the line of every key, ``${VAR}`` expansion,
``WATCHDOG_*`` overrides, and every problem turned into one line that says where and what."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import pydantic_core
import yaml

from watchdog import errors
from watchdog.config import fields, settings

ENV_PREFIX = "WATCHDOG_"
# WATCHDOG_<suffix> -> the key it overrides (WATCHDOG_CONFIG, the file itself, is read by the CLI).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "DATABASE_URL": ("database_url",),
    "INTERVAL": ("interval",),
    "JITTER": ("jitter",),
    "HTTP_LISTEN": ("http", "listen"),
    "API_TOKEN": ("http", "api_token"),
    "SLACK_WEBHOOK_URL": ("slack", "webhook_url"),
    "SLACK_TOKEN": ("slack", "token"),
    "SLACK_CHANNEL": ("slack", "channel"),
    "SLACK_SIGNING_SECRET": ("slack", "signing_secret"),
    "HOOK_TOKEN": ("hooks", "registry_token"),
    "DOCKERHUB_HOOK_TOKEN": ("hooks", "dockerhub_token"),
    "CERTS_DIR": ("certs_dir",),
}
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NO_WATCHES = "nothing to watch (add at least one repository)"


class _LineDict(dict[Any, Any]):
    """A YAML mapping that remembers the line of each of its keys."""

    def __init__(self, data: Mapping[Any, Any], lines: dict[Any, int]) -> None:
        super().__init__(data)
        self.lines = lines


class _LineList(list[Any]):
    """A YAML sequence that remembers the line of each of its items."""

    def __init__(self, data: list[Any], lines: dict[Any, int]) -> None:
        super().__init__(data)
        self.lines = lines


class _Expanded(str):
    """A string that held ``${VAR}`` references; ``template`` is the text before expansion."""

    template: str


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) or key is None:
            lines[key] = key_node.start_mark.line + 1
    return _LineDict(mapping, lines)


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    items = loader.construct_sequence(node, deep=True)
    return _LineList(items, {i: n.start_mark.line + 1 for i, n in enumerate(node.value)})


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def expand_env(text: str, env: Mapping[str, str], problems: list[str], where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is a problem."""

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{where}: environment variable {name} is not set")
        return ""

    return ENV_RE.sub(sub, text)


def path_of(loc: tuple[Any, ...]) -> str:
    """``("watches", 1, "tags")`` -> ``watches[1].tags``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Document:
    """The raw config with everything needed to say where a problem is."""

    def __init__(self, raw: Any, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.overridden: dict[tuple[Any, ...], str] = {}  # key -> the WATCHDOG_* variable
        self.root: Any = raw  # the lines of the raw document say where expansion problems are
        self.root = self._expand(raw, ())
        if self.root is None:
            self.root = _LineDict({}, {})
        if isinstance(self.root, dict):
            self._override()

    def _expand(self, value: Any, loc: tuple[Any, ...]) -> Any:
        if isinstance(value, _LineDict):
            items = {k: self._expand(v, (*loc, k)) for k, v in value.items()}
            return _LineDict(items, value.lines)
        if isinstance(value, _LineList):
            return _LineList([self._expand(v, (*loc, i)) for i, v in enumerate(value)], value.lines)
        if isinstance(value, dict):
            return _LineDict({k: self._expand(v, (*loc, k)) for k, v in value.items()}, {})
        if isinstance(value, list):
            return _LineList([self._expand(v, (*loc, i)) for i, v in enumerate(value)], {})
        if isinstance(value, str) and "${" in value:
            return self._text(value, self.where(loc), template=value)
        return value

    def _text(self, value: str, where: str, template: str) -> _Expanded:
        expanded = _Expanded(expand_env(value, self.env, self.problems, where))
        expanded.template = template
        return expanded

    def _override(self) -> None:
        for suffix, key in ENV_OVERRIDES.items():
            name = ENV_PREFIX + suffix
            if name not in self.env:
                continue
            node = self.root
            for part in key[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = _LineDict({}, {})
                node = node[part]
            self.overridden[key] = name
            node[key[-1]] = self._text(self.env[name], path_of(key), template=f"${{{name}}}")

    def where(self, loc: tuple[Any, ...]) -> str:
        """``loc`` as a key path, with the YAML line of the deepest part of it the file has (or
        the environment variable that set it)."""
        for i in range(len(loc), 0, -1):
            if loc[:i] in self.overridden:
                return f"{path_of(loc) or '(top level)'} (from {self.overridden[loc[:i]]})"
        node, line = self.root, None
        for part in loc:
            if isinstance(node, _LineDict | _LineList) and part in node.lines:
                line = node.lines[part]
                node = node[part]
            else:
                break
        return (path_of(loc) or "(top level)") + (f" (line {line})" if line else "")

    def describe(self, error: pydantic_core.ErrorDetails) -> str:
        """One pydantic error in the config's words."""
        kind, value = error["type"], error["input"]
        if kind == "config":
            message = str((error.get("ctx") or {}).get("msg", error["msg"]))
        elif kind == "missing":
            message = "is required"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = f"expected a mapping, got {fields.kind(value)}"
        elif kind in ("tuple_type", "list_type", "iterable_type"):
            message = "expected a list"
        else:
            message = error["msg"].removeprefix("Value error, ")
        return f"{self.where(tuple(error['loc']))}: {message}"


def from_mapping(
    raw: Any,
    env: Mapping[str, str] | None = None,
    source: str | None = None,
    *,
    require_watches: bool = False,
) -> settings.Settings:
    """Build Settings from parsed YAML (plus env overrides). Raises ConfigError listing every
    problem; with ``require_watches``, an empty ``watches`` is one of them (``scan`` and ``run``)."""
    doc = _Document(raw, dict(os.environ if env is None else env))
    problems = doc.problems
    result: settings.Settings | None = None
    try:
        result = settings.Settings.model_validate(doc.root, context={fields.FROM_FILE: True})
    except pydantic.ValidationError as exc:
        problems += [doc.describe(e) for e in exc.errors()]
    if require_watches and isinstance(doc.root, dict) and not doc.root.get("watches"):
        problems.append(f"{doc.where(('watches',))}: {_NO_WATCHES}")
    if problems or result is None:
        raise errors.ConfigError(problems, source=source)
    result._source = source
    return result


def load(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    *,
    require_watches: bool = False,
) -> settings.Settings:
    """Read the YAML file at ``path`` (or only the environment when None) into Settings."""
    env = dict(os.environ if env is None else env)
    if path is None:
        return from_mapping({}, env, source=None, require_watches=require_watches)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.ConfigError([f"config file not found: {p}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError([f"cannot read config file {p}: {exc}"]) from None
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise errors.ConfigError([f"YAML syntax error{where}: {problem}"], source=str(p)) from None
    return from_mapping(raw, env, source=str(p), require_watches=require_watches)
