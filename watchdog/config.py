"""Configuration: YAML + ``${ENV}`` expansion + ``WATCHDOG_*`` overrides -> frozen, validated Settings.

``load()`` reports every problem at once, each naming its key (and the YAML line where known).
Secrets are held in ``Secret`` so that printing a Settings object never shows them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from watchdog import errors, models

DEFAULT_DATABASE_URL = "sqlite:///watchdog.db"
# release-like: 1.2.3, v1.2.3, 1.2.3-rc.1, 1.2.3+build.5 ; not latest, main, sha-abc, sha256-...
DEFAULT_INCLUDE = (r"^v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$",)
ON_MOVE = ("alert", "restore")
ENV_PREFIX = "WATCHDOG_"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Secret:
    """A string that never shows itself in repr/str/format. ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(value: object) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms``, ``1d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


@dataclasses.dataclass(frozen=True)
class RegistrySettings:
    host: str  # normalised (docker.io for Docker Hub), may include :port
    username: str | None = None
    password: Secret | None = None
    insecure: bool = False  # plain HTTP; loopback hosts default to True, as Docker does
    max_concurrency: int = 8
    timeout: float = 10.0
    # credentials for pushes (restore), when they differ from the pull ones
    push_username: str | None = None
    push_password: Secret | None = None
    # True when the config says nothing about credentials: docker config.json / helpers are tried
    use_docker_config: bool = True

    @property
    def scheme(self) -> str:
        return "http" if self.insecure else "https"


@dataclasses.dataclass(frozen=True)
class TagFilter:
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", tuple(re.compile(p) for p in self.include))
        object.__setattr__(self, "_exc", tuple(re.compile(p) for p in self.exclude))

    def matches(self, tag: str) -> bool:
        """True for a tag this watch records. Referrer fallback tags (``sha256-...``) never match."""
        if tag.startswith("sha256-"):
            return False
        inc: tuple[re.Pattern[str], ...] = getattr(self, "_inc")  # noqa: B009
        exc: tuple[re.Pattern[str], ...] = getattr(self, "_exc")  # noqa: B009
        return any(p.search(tag) for p in inc) and not any(p.search(tag) for p in exc)


@dataclasses.dataclass(frozen=True)
class WatchSettings:
    repository: models.ImageRef  # without tag
    tags: TagFilter = TagFilter()
    on_move: str = "alert"
    interval: float | None = None  # None = the global interval

    @property
    def name(self) -> str:
        return self.repository.name


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    listen: str = "127.0.0.1:9797"
    api_token: Secret | None = None

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


# Slack user ids: U... (or W... on Enterprise Grid), upper-case letters and digits.
SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,30}$")


@dataclasses.dataclass(frozen=True)
class SlackSettings:
    webhook_url: Secret | None = None
    token: Secret | None = None
    channel: str | None = None
    signing_secret: Secret | None = None
    allowed_users: tuple[str, ...] = ()
    base_url: str | None = None  # Web API base (tests point it at a local stand-in)
    # one alert when no check of a registry succeeded for this long, one when it answers again
    unreachable_after: float = 600.0
    # the outbox lease: a send whose outcome is unknown (the daemon died mid-send) goes out again
    # after this long; keep it well above a send's 10 s timeout when replicas share the outbox
    lease: float = 60.0

    @property
    def buttons(self) -> bool:
        """True when alerts carry Restore/Accept buttons: bot mode, a signing secret to verify
        the taps and an allow-list of who may tap."""
        return bool(self.token and self.channel and self.signing_secret and self.allowed_users)


@dataclasses.dataclass(frozen=True)
class RestoreSettings:
    max_per_tag: int = 3
    window: float = 3600.0


@dataclasses.dataclass(frozen=True)
class HookSettings:
    # "Authorization: Bearer <token>" on /hooks/registry and /hooks/harbor
    registry_token: Secret | None = None
    # "?token=<token>" on /hooks/dockerhub (Docker Hub cannot send headers)
    dockerhub_token: Secret | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: Secret = dataclasses.field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))
    interval: float = 60.0
    jitter: float = 10.0
    http: HttpSettings = HttpSettings()
    registries: tuple[RegistrySettings, ...] = ()
    watches: tuple[WatchSettings, ...] = ()
    slack: SlackSettings = SlackSettings()
    restore: RestoreSettings = RestoreSettings()
    hooks: HookSettings = HookSettings()
    source: str | None = None  # the file it came from

    def registry(self, host: str) -> RegistrySettings:
        """Settings for ``host``: the configured entry, else defaults (plain HTTP on loopback)."""
        wanted = models.normalize_host(host)
        for reg in self.registries:
            if reg.host == wanted:
                return reg
        return RegistrySettings(host=wanted, insecure=models.is_loopback_host(wanted))


# --- loading -------------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    lines = {}
    for key_node, _ in node.value:
        lines[key_node.value] = key_node.start_mark.line + 1
    return _LineDict(mapping, lines)


class _LineDict(dict[Any, Any]):
    def __init__(self, data: Mapping[Any, Any], lines: dict[str, int]) -> None:
        super().__init__(data)
        self.lines = lines


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


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

    return _ENV_RE.sub(sub, text)


class _Reader:
    """Walks the raw YAML, converting values and collecting every problem with its key path."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def problem(self, path: str, message: str, node: Any = None, key: str | None = None) -> None:
        line = ""
        if isinstance(node, _LineDict) and key is not None and key in node.lines:
            line = f" (line {node.lines[key]})"
        self.problems.append(f"{path}{line}: {message}")

    def mapping(self, value: Any, path: str, known: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in known:
                self.problem(
                    f"{path}.{key}" if path else str(key),
                    f"unknown key (known: {', '.join(sorted(known))})",
                    value,
                    key,
                )
        return value

    def string(self, node: dict[str, Any], key: str, path: str, default: str | None) -> str | None:
        if key not in node or node[key] is None:
            return default
        value = node[key]
        if isinstance(value, bool | dict | list):
            self.problem(
                f"{path}{key}", f"expected a string, got {type(value).__name__}", node, key
            )
            return default
        return expand_env(str(value), self.env, self.problems, f"{path}{key}")

    def secret(self, node: dict[str, Any], key: str, path: str) -> Secret | None:
        value = self.string(node, key, path, None)
        return Secret(value) if value else None

    def duration(self, node: dict[str, Any], key: str, path: str, default: float) -> float:
        if key not in node or node[key] is None:
            return default
        raw = node[key]
        if isinstance(raw, str):
            raw = expand_env(raw, self.env, self.problems, f"{path}{key}")
        try:
            return parse_duration(raw)
        except ValueError as exc:
            self.problem(f"{path}{key}", str(exc), node, key)
            return default

    def integer(
        self,
        node: dict[str, Any],
        key: str,
        path: str,
        default: int,
        minimum: int = 0,
        maximum: int = 1_000_000,
    ) -> int:
        if key not in node or node[key] is None:
            return default
        raw = node[key]
        if isinstance(raw, str):
            raw = expand_env(raw, self.env, self.problems, f"{path}{key}")
        try:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = int(raw)
        except (TypeError, ValueError):
            self.problem(f"{path}{key}", f"expected an integer, got {raw!r}", node, key)
            return default
        if not minimum <= value <= maximum:
            self.problem(f"{path}{key}", f"must be between {minimum} and {maximum}", node, key)
            return default
        return value

    def boolean(self, node: dict[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in node or node[key] is None:
            return default
        raw = node[key]
        if isinstance(raw, str):
            raw = expand_env(raw, self.env, self.problems, f"{path}{key}").strip().lower()
            if raw in ("true", "yes", "on", "1"):
                return True
            if raw in ("false", "no", "off", "0"):
                return False
        if isinstance(raw, bool):
            return raw
        self.problem(f"{path}{key}", f"expected true or false, got {raw!r}", node, key)
        return default

    def string_list(self, node: dict[str, Any], key: str, path: str) -> tuple[str, ...] | None:
        if key not in node or node[key] is None:
            return None
        raw = node[key]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str | int | float) for x in raw):
            self.problem(f"{path}{key}", "expected a list of strings", node, key)
            return None
        return tuple(expand_env(str(x), self.env, self.problems, f"{path}{key}") for x in raw)


_TOP_KEYS = {
    "database_url",
    "interval",
    "jitter",
    "http",
    "registries",
    "watches",
    "slack",
    "restore",
    "hooks",
}
_REGISTRY_KEYS = {
    "host",
    "username",
    "password",
    "insecure",
    "max_concurrency",
    "timeout",
    "push_username",
    "push_password",
}
_WATCH_KEYS = {"repository", "tags", "on_move", "interval"}


def from_mapping(
    raw: Any, env: Mapping[str, str] | None = None, source: str | None = None
) -> Settings:
    """Build Settings from parsed YAML (plus env overrides). Raises ConfigError listing every problem."""
    env = dict(os.environ if env is None else env)
    r = _Reader(env)
    top = r.mapping(raw, "", _TOP_KEYS)
    _apply_env_overrides(top, env)

    database_url = r.string(top, "database_url", "", DEFAULT_DATABASE_URL) or DEFAULT_DATABASE_URL
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", database_url):
        r.problem(
            "database_url",
            "must start with sqlite:/// or postgresql+psycopg://",
            top,
            "database_url",
        )
    interval = r.duration(top, "interval", "", 60.0)
    if interval < 1:
        r.problem("interval", "must be at least 1s", top, "interval")
    jitter = r.duration(top, "jitter", "", min(10.0, interval / 6))

    http_raw = r.mapping(top.get("http"), "http", {"listen", "api_token"})
    listen = r.string(http_raw, "listen", "http.", "127.0.0.1:9797") or "127.0.0.1:9797"
    if not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$", listen) or not (
        0 < int(listen.rsplit(":", 1)[1]) < 65536
    ):
        r.problem("http.listen", f"expected host:port, got {listen!r}", http_raw, "listen")
        listen = "127.0.0.1:9797"
    http = HttpSettings(listen=listen, api_token=r.secret(http_raw, "api_token", "http."))

    registries: list[RegistrySettings] = []
    regs_raw = top.get("registries") or []
    if not isinstance(regs_raw, list):
        r.problem("registries", "expected a list", top, "registries")
        regs_raw = []
    seen_hosts: set[str] = set()
    for i, item in enumerate(regs_raw):
        p = f"registries[{i}]."
        node = r.mapping(item, f"registries[{i}]", _REGISTRY_KEYS)
        host = r.string(node, "host", p, None)
        if not host:
            r.problem(f"{p}host", "is required")
            continue
        host = host.strip().rstrip("/")
        if "://" in host:
            r.problem(f"{p}host", f"give host[:port] without a scheme, got {host!r}", node, "host")
            continue
        host = models.normalize_host(host)
        if host in seen_hosts:
            r.problem(f"{p}host", f"{host} is configured twice", node, "host")
        seen_hosts.add(host)
        username = r.string(node, "username", p, None) or None
        password = r.secret(node, "password", p)
        if password and not username:
            r.problem(f"{p}username", "is required when a password is given", node, "password")
        push_username = r.string(node, "push_username", p, None) or None
        push_password = r.secret(node, "push_password", p)
        registries.append(
            RegistrySettings(
                host=host,
                username=username,
                password=password,
                insecure=r.boolean(node, "insecure", p, models.is_loopback_host(host)),
                max_concurrency=r.integer(node, "max_concurrency", p, 8, minimum=1, maximum=256),
                timeout=r.duration(node, "timeout", p, 10.0),
                push_username=push_username,
                push_password=push_password,
                use_docker_config=username is None,
            )
        )

    watches: list[WatchSettings] = []
    watches_raw = top.get("watches") or []
    if not isinstance(watches_raw, list):
        r.problem("watches", "expected a list", top, "watches")
        watches_raw = []
    seen_repos: set[str] = set()
    for i, item in enumerate(watches_raw):
        p = f"watches[{i}]."
        if isinstance(item, str):
            item = {"repository": item}
        node = r.mapping(item, f"watches[{i}]", _WATCH_KEYS)
        repo_text = r.string(node, "repository", p, None)
        if not repo_text:
            r.problem(f"{p}repository", "is required")
            continue
        try:
            ref = models.ImageRef.parse(repo_text, allow_tag=False)
        except errors.InvalidReference as exc:
            r.problem(f"{p}repository", str(exc), node, "repository")
            continue
        if ref.digest:
            r.problem(
                f"{p}repository", "give a repository, not a digest reference", node, "repository"
            )
            continue
        if ref.name in seen_repos:
            r.problem(f"{p}repository", f"{ref.name} is watched twice", node, "repository")
        seen_repos.add(ref.name)
        tags_raw = r.mapping(node.get("tags"), f"{p}tags", {"include", "exclude"})
        include = r.string_list(tags_raw, "include", f"{p}tags.") or DEFAULT_INCLUDE
        exclude = r.string_list(tags_raw, "exclude", f"{p}tags.") or ()
        bad = False
        for kind, patterns in (("include", include), ("exclude", exclude)):
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    r.problem(f"{p}tags.{kind}", f"bad regular expression {pattern!r}: {exc}")
                    bad = True
        on_move = r.string(node, "on_move", p, "alert") or "alert"
        if on_move not in ON_MOVE:
            r.problem(
                f"{p}on_move",
                f"must be one of {', '.join(ON_MOVE)}, got {on_move!r}",
                node,
                "on_move",
            )
        w_interval = r.duration(node, "interval", p, 0.0) if "interval" in node else None
        if w_interval is not None and w_interval < 1:
            r.problem(f"{p}interval", "must be at least 1s", node, "interval")
        if bad:
            continue
        watches.append(
            WatchSettings(
                repository=ref,
                tags=TagFilter(include, exclude),
                on_move=on_move,
                interval=w_interval,
            )
        )

    slack_raw = r.mapping(
        top.get("slack"),
        "slack",
        {
            "webhook_url",
            "token",
            "channel",
            "signing_secret",
            "allowed_users",
            "base_url",
            "unreachable_after",
            "lease",
        },
    )
    slack = SlackSettings(
        webhook_url=r.secret(slack_raw, "webhook_url", "slack."),
        token=r.secret(slack_raw, "token", "slack."),
        channel=r.string(slack_raw, "channel", "slack.", None) or None,
        signing_secret=r.secret(slack_raw, "signing_secret", "slack."),
        allowed_users=r.string_list(slack_raw, "allowed_users", "slack.") or (),
        base_url=r.string(slack_raw, "base_url", "slack.", None) or None,
        unreachable_after=r.duration(slack_raw, "unreachable_after", "slack.", 600.0),
        lease=r.duration(slack_raw, "lease", "slack.", 60.0),
    )
    if slack.lease < 1:
        r.problem("slack.lease", "must be at least 1s", slack_raw, "lease")
    if slack.webhook_url and not slack.webhook_url.reveal().startswith(("https://", "http://")):
        r.problem("slack.webhook_url", "must be an http(s) URL")
    if slack.token and not slack.channel:
        r.problem("slack.channel", "is required with slack.token")
    # Buttons (Restore / Accept from the alert) need all three: a bot token (to update the message),
    # the signing secret (to trust a tap) and the people allowed to tap. Half a setup fails closed.
    if slack.signing_secret and not slack.token:
        r.problem("slack.signing_secret", "needs slack.token: buttons work in bot-token mode only")
    if slack.signing_secret and not slack.allowed_users:
        r.problem(
            "slack.allowed_users",
            "list the Slack user ids (U...) allowed to restore or accept from Slack",
        )
    if slack.allowed_users and not slack.signing_secret:
        r.problem("slack.signing_secret", "is required with slack.allowed_users")
    for user in slack.allowed_users:
        if not SLACK_USER_RE.match(user):
            r.problem("slack.allowed_users", f"{user!r} is not a Slack user id (like U0123ABCD)")

    restore_raw = r.mapping(top.get("restore"), "restore", {"max_per_tag", "window"})
    restore = RestoreSettings(
        max_per_tag=r.integer(restore_raw, "max_per_tag", "restore.", 3, minimum=1, maximum=1000),
        window=r.duration(restore_raw, "window", "restore.", 3600.0),
    )
    hooks_raw = r.mapping(top.get("hooks"), "hooks", {"registry_token", "dockerhub_token"})
    hooks = HookSettings(
        registry_token=r.secret(hooks_raw, "registry_token", "hooks."),
        dockerhub_token=r.secret(hooks_raw, "dockerhub_token", "hooks."),
    )

    if r.problems:
        raise errors.ConfigError(r.problems, source=source)
    return Settings(
        database_url=Secret(database_url),
        interval=interval,
        jitter=jitter,
        http=http,
        registries=tuple(registries),
        watches=tuple(watches),
        slack=slack,
        restore=restore,
        hooks=hooks,
        source=source,
    )


def _apply_env_overrides(top: dict[str, Any], env: Mapping[str, str]) -> None:
    """``WATCHDOG_DATABASE_URL``, ``WATCHDOG_INTERVAL``, ``WATCHDOG_HTTP_LISTEN``... override the file."""
    simple = {
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
    }
    for suffix, path in simple.items():
        value = env.get(ENV_PREFIX + suffix)
        if value is None:
            continue
        node = top
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = value


def load(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file at ``path`` (or only the environment when None) into Settings."""
    env = dict(os.environ if env is None else env)
    if path is None:
        return from_mapping({}, env, source=None)
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
    return from_mapping(raw, env, source=str(p))


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ``***``."""

    def conv(value: Any) -> Any:
        if isinstance(value, Secret):
            return "***" if value else None
        if isinstance(value, models.ImageRef):
            return value.name
        if isinstance(value, TagFilter):
            return {"include": list(value.include), "exclude": list(value.exclude)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: conv(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [conv(v) for v in value]
        return value

    out = conv(settings)
    assert isinstance(out, dict)
    url = settings.database_url.reveal()
    out["database_url"] = mask_url(url)
    out.pop("source", None)
    return out


def mask_url(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)
