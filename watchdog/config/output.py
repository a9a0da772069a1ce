"""Settings back out as data: ``masked()`` for JSON, ``to_yaml()`` for a config file that
``load()`` reads back (``config check``), secrets never shown."""

from __future__ import annotations

import re
from typing import Any

import pydantic
import yaml

from watchdog import models
from watchdog.config import fields, loading, settings

MASK = "***"
# a password in a URL, unless it is one whole ${VAR} reference (which shows nothing secret)
_URL_PASSWORD_RE = re.compile(r"(://[^/:@]*:)(?!\$\{[A-Za-z_][A-Za-z0-9_]*\}@)[^@/]*@")


def mask_url(url: str) -> str:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


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

    def default_masked(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if default is None:
            return match.group(0)
        return f"${{{name}:-{mask_url(default) if url else MASK}}}"

    if url:  # a URL's other parts are not secret: only its password (or a default's) is hidden
        return _URL_PASSWORD_RE.sub(r"\1***@", loading.ENV_RE.sub(default_masked, template))
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
