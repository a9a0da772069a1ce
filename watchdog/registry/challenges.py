"""``WWW-Authenticate`` challenges (RFC 7235): parsed, and the one to answer picked.

Pure parsing, no I/O: :mod:`watchdog.registry.auth` answers what these find.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower-cased) and its parameters."""

    scheme: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse(values: str | list[str]) -> list[Challenge]:
    """Every challenge in one or more ``WWW-Authenticate`` header values (RFC 7235).

    Parameter names are lower-cased; quoted values may hold commas, spaces and ``\\"``. Input that
    does not parse is skipped rather than guessed at: the caller then finds no usable challenge.
    """
    out: list[Challenge] = []
    for value in [values] if isinstance(values, str) else values:
        out.extend(_parse_one_header(value))
    return out


def _parse_one_header(text: str) -> list[Challenge]:
    out: list[Challenge] = []
    n = len(text)
    i = 0

    def skip(chars: str) -> None:
        nonlocal i
        while i < n and text[i] in chars:
            i += 1

    def token() -> str:
        nonlocal i
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        return text[start:i]

    def bare() -> str:
        # Unquoted values should be tokens, but registries send realm=https://... unquoted too.
        nonlocal i
        start = i
        while i < n and text[i] not in ", \t":
            i += 1
        return text[start:i]

    def quoted() -> str:
        nonlocal i
        i += 1  # the opening quote
        buf: list[str] = []
        while i < n and text[i] != '"':
            if text[i] == "\\" and i + 1 < n:
                i += 1
            buf.append(text[i])
            i += 1
        i += 1  # the closing quote (or the end of an unterminated string)
        return "".join(buf)

    while i < n:
        skip(" \t,")
        scheme = token()
        if not scheme:
            i += 1  # not a token: step over it and look for the next challenge
            continue
        params: dict[str, str] = {}
        while True:
            skip(" \t")
            mark = i
            name = token()
            skip(" \t")
            if not name or i >= n or text[i] != "=":
                # no "name=" here: the next challenge's scheme starts (or junk we step over)
                i = mark
                break
            i += 1  # '='
            skip(" \t")
            value = quoted() if i < n and text[i] == '"' else bare()
            params[name.lower()] = value
            skip(" \t")
            if i < n and text[i] == ",":
                i += 1
                continue
            break
        out.append(Challenge(scheme.lower(), params))
    return out


def pick(challenges: list[Challenge]) -> Challenge | None:
    """The challenge to answer: Bearer (with a realm) over Basic; None when neither is offered."""
    for ch in challenges:
        if ch.scheme == "bearer" and ch.realm:
            return ch
    for ch in challenges:
        if ch.scheme == "basic":
            return ch
    return None
