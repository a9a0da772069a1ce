"""JSON from the network, parsed with a depth limit.

``json.loads`` recurses once per nesting level, so a body of ``[[[[...]]]]`` from a registry, a
token service or a webhook raises RecursionError (not ValueError) from deep inside the parser,
which no "is this JSON?" handler expects. :func:`loads` refuses such input first, with the
ordinary :class:`json.JSONDecodeError` every caller already maps to its own error (a registry's
ProtocolError, a hook's 400), and never recurses past :data:`MAX_DEPTH` levels.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Manifests, indexes, tag lists, token answers, Slack payloads and webhook envelopes nest a
# handful of levels; 64 leaves room for anything honest and stays far below the recursion limit.
MAX_DEPTH = 64

# Escapes occur only inside strings; once they are gone, what is left of a string is its two
# quotes around whatever it held, and split('"') throws strings away. All of it runs in C.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_KEEP_STRUCTURE = {i: None for i in range(128) if chr(i) not in '"[]{}'}
_SAME_BRACKETS = str.maketrans("{}", "[]")


class TooDeep(json.JSONDecodeError):
    """The document nests deeper than allowed (a JSONDecodeError, so a ValueError too)."""

    def __str__(self) -> str:
        return self.msg


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(data)``, refusing documents nested deeper than ``max_depth`` levels.

    Raises what ``json.loads`` raises for bad input (JSONDecodeError, UnicodeDecodeError) and
    :class:`TooDeep` (a JSONDecodeError) for deep nesting; never RecursionError.
    """
    if isinstance(data, bytes | bytearray):
        text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    else:
        text = data
    check_depth(text, max_depth)
    try:
        return json.loads(text)
    except RecursionError:
        # Only reachable for malformed input that fooled the bracket count (an unterminated
        # string), or a call made with the stack already nearly full.
        raise TooDeep("JSON nested too deep to parse", text, 0) from None


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise TooDeep when ``text`` (JSON) has arrays/objects nested deeper than ``max_depth``.

    Exact for valid JSON (brackets inside strings are not counted); at most ``max_depth``
    linear passes over the brackets, in C.
    """
    # Fast path, in C: fewer opening brackets than the limit cannot nest deeper than it
    # (a 16 MiB tag list has two).
    if text.count("[") + text.count("{") <= max_depth:
        return
    if "\\" in text:
        text = _ESCAPE.sub("", text)
    outside = "".join(text.translate(_KEEP_STRUCTURE).split('"')[::2])
    # Only the depth matters here (matching is the parser's business): each pass removes every
    # innermost pair, so a pair still there after max_depth passes encloses more levels.
    brackets = outside.translate(_SAME_BRACKETS)
    if "[" * (max_depth + 1) in brackets:  # the usual attack, [[[[...]]]], found in one search
        raise TooDeep(f"JSON nested deeper than {max_depth} levels", text, 0)
    for _ in range(max_depth):
        shorter = brackets.replace("[]", "")
        if len(shorter) == len(brackets):
            return
        brackets = shorter
    if "[]" in brackets:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels", text, 0)
