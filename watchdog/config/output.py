"""Settings back out as data: ``masked()`` for JSON, ``to_yaml()`` for a config file that
``load()`` reads back (``config check``), secrets never shown."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import pydantic
import yaml

from watchdog import models
from watchdog.config import fields, loading, settings

MASK = "***"
# libpq connection parameters that hold a secret, wherever a URL's query string gives them
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
_PLACEHOLDER = "\x00{}\x00"  # stands for a ${VAR} reference while a URL template is parsed


def _never(_: str) -> bool:
    return False


def _split_url(url: str) -> tuple[str, str | None, str | None, str] | None:
    """``(scheme, username, password, rest)`` of ``url`` exactly as SQLAlchemy's ``make_url``
    reads them (its grammar: the username runs to the first ``:`` or ``/``, the password from
    there to the first ``@``, so a password may hold ``/``, ``?`` or ``:``); None when ``url`` is
    not ``scheme://...``. Parsed by hand because the pure core imports no SQLAlchemy; a test
    holds it to ``make_url``."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not all(c.isalnum() or c in "_+" for c in scheme):
        return None
    end = next((i for i, c in enumerate(rest) if c in ":/"), len(rest))
    if rest[end : end + 1] == ":" and "@" in rest[end + 1 :]:
        at = rest.index("@", end + 1)
        return scheme, rest[:end], rest[end + 1 : at], rest[at + 1 :]
    at = rest.rfind("@", 0, end)
    if at >= 0:
        return scheme, rest[:at], None, rest[at + 1 :]
    return scheme, None, None, rest


def mask_url(url: str, *, keep: Callable[[str], bool] = _never) -> str:
    """``url`` for messages, logs and ``config check``: the password, in the userinfo
    (``postgresql://user:***@host/db``) or a query parameter (``?password=***``,
    ``sslpassword``), replaced by ``***``, whatever characters it holds; the rest as given. A
    text that does not parse as a URL the way the database driver reads it (not
    ``scheme://...``, an ``@`` left in the host) is shown as ``***`` alone, never raw.
    ``keep(password)`` true leaves a password shown (a ``${VAR}`` reference)."""
    parts = _split_url(url)
    if parts is None:
        return MASK
    scheme, user, password, rest = parts
    base, question, query = rest.partition("?")
    if "@" in base.split("/", 1)[0]:
        return MASK  # an unescaped "@" in the password: a part of it would show as the host
    userinfo = ""
    if user is not None:
        shown = password if password is None or keep(password) else MASK
        userinfo = user + ("" if shown is None else ":" + shown) + "@"
    if question:
        query = "&".join(_masked_param(item, keep) for item in query.split("&"))
    return f"{scheme}://{userinfo}{base}{question}{query}"


def _masked_param(item: str, keep: Callable[[str], bool]) -> str:
    key, eq, value = item.partition("=")
    secret = urllib.parse.unquote_plus(key).strip().lower() in SECRET_QUERY_KEYS
    return f"{key}{eq}{MASK}" if secret and eq and not keep(value) else item


def _mask_url_template(template: str) -> str:
    """A ``database_url`` as written: ``mask_url`` of it, where a password (or query password)
    that is one plain ``${VAR}`` shows as that reference and any other password text, a
    reference's default included, as ``***``; a template that is one reference shows with its
    default masked."""
    match = loading.ENV_RE.fullmatch(template)
    if match is not None:
        name, default = match.group(1), match.group(2)
        return template if default is None else f"${{{name}:-{mask_url(default)}}}"
    references: list[str] = []

    def hold(found: re.Match[str]) -> str:
        references.append(found.group(0))
        return _PLACEHOLDER.format(len(references) - 1)

    held = loading.ENV_RE.sub(hold, template)
    plain = {_PLACEHOLDER.format(i) for i, r in enumerate(references) if ":-" not in r}
    shown = mask_url(held, keep=plain.__contains__)
    for i, reference in enumerate(references):
        shown = shown.replace(_PLACEHOLDER.format(i), reference)
    return shown


def masked(config: settings.Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ``***``."""

    def conv(value: Any) -> Any:
        if isinstance(value, fields.Secret):
            return MASK if value else None
        if isinstance(value, models.ImageRef):
            return value.name
        if isinstance(value, pydantic.BaseModel):
            return {name: conv(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, tuple | list):
            return [conv(v) for v in value]
        return value

    out = conv(config)
    assert isinstance(out, dict)
    out["database_url"] = mask_url(config.database_url.reveal())
    return out


def _secret_text(secret: fields.Secret, url: bool) -> str | None:
    """What ``to_yaml`` prints for a secret: the ``${VAR}`` reference it came from, else None."""
    template = secret.template
    if template is None:
        return None

    if url:  # a URL's other parts are not secret: only its password (or a default's) is hidden
        return _mask_url_template(template)

    def default_masked(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        return match.group(0) if default is None else f"${{{name}:-{MASK}}}"

    if loading.ENV_RE.fullmatch(template):
        return loading.ENV_RE.sub(default_masked, template)
    return None  # literal text around a reference may be part of the secret


def to_yaml(config: settings.Settings) -> str:
    """The effective configuration as a YAML config file that ``load()`` accepts.

    A secret set by a ``${VAR}`` reference (or a ``WATCHDOG_*`` variable) is printed as that
    reference, a ``${VAR:-default}``'s default masked: in the same environment the file loads to
    the same settings. A secret written in the file itself is printed as ``***`` and named in a
    comment at the top (fed back, it is the literal ``***``). Durations print as ``30s``, ``5m``.
    """
    literal: list[str] = []

    def conv(value: Any, loc: tuple[Any, ...]) -> Any:
        if isinstance(value, fields.Secret):
            url = loc == ("database_url",)
            text = _secret_text(value, url)
            if text is None and value:
                text = mask_url(value.reveal()) if url else MASK
                if text != value.reveal():
                    literal.append(loading.path_of(loc))
            return text
        if isinstance(value, models.ImageRef):
            return value.name
        if isinstance(value, pydantic.BaseModel):
            names = [n for n in type(value).model_fields if n not in getattr(value, "internal", ())]
            return {n: conv(getattr(value, n), (*loc, n)) for n in names}
        if isinstance(value, tuple | list):
            return [conv(v, (*loc, i)) for i, v in enumerate(value)]
        if isinstance(value, float):
            return fields.format_duration(value)  # every float setting is a duration
        return value

    data = conv(config, ())
    head = [f"# {config.source or '(no file: defaults and environment)'}: valid"]
    if literal:
        given = ", ".join(literal)
        head.append(
            f"# {MASK} stands for secrets the file gives as text, not as one ${{VAR}}: {given}"
        )
    return "\n".join([*head, yaml.safe_dump(data, sort_keys=False).rstrip()])
