"""Text from outside (registry error bodies, tags, reasons typed into the API or Slack, log
fields) made safe to print on a terminal: its control characters are shown, never obeyed.

A registry's error body written raw could clear the screen, print a fake "all OK", set the
window title or plant a hyperlink (ESC and C1 sequences), or start a line of its own (a newline
in a one-line field). ``safe`` escapes every C0 control (tab aside; newline too unless the text
is meant to have several lines), DEL, every C1 control, and the Unicode controls that reorder
or break lines (bidi overrides and isolates, the line and paragraph separators), as ``\\xNN`` or
``\\uNNNN``. JSON output needs none of this: ``json.dumps`` escapes them all already.
"""

from __future__ import annotations

_UNICODE_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029, 0x200E, 0x200F]


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ONE_LINE = {
    code: _escape(code)
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *_UNICODE_CONTROLS]
    if code != 0x09
}
_MULTILINE = {code: text for code, text in _ONE_LINE.items() if code != 0x0A}


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with its control characters escaped (see the module docstring): one line,
    unless ``multiline`` keeps its newlines."""
    return text.translate(_MULTILINE if multiline else _ONE_LINE)
