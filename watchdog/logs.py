"""Structured logging: one event per line, ``key=value`` text or JSON (``--log-format json``).

Log calls in the code read like ``log.warning("tag_moved ref=%s old=%s", ...)``: the first word is
the event name. Secrets never reach a log call: settings hold them as ``config.Secret``.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import re
import sys

from watchdog import terminal


class TextFormatter(logging.Formatter):
    """One line per event; what it quotes from outside (a registry's error body, a client's
    address) cannot start a line of its own or send the terminal escape sequences."""

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message = terminal.safe(record.getMessage())
        line = f"ts={ts[:-4]}Z level={record.levelname.lower()} logger={record.name} {message}"
        if record.exc_info:
            # Unexpected failures only: expected ones are logged without a traceback.
            line += "\n" + terminal.safe(self.formatException(record.exc_info), multiline=True)
        return line


# One ``key=value`` of a log line: the value quoted as %r writes it (either quote, backslash
# escapes), or a run of non-blanks as %s writes a digest, a host or a number.
_PAIR = re.compile(r"""\s*([A-Za-z_][\w.-]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_RESERVED = frozenset({"ts", "level", "logger", "event", "exception", "fields"})


def parse_fields(text: str) -> dict[str, object] | None:
    """The ``key=value`` pairs of ``text`` (what follows a log line's event name), quoted values
    unquoted; None when ``text`` is not made of such pairs alone."""
    out: dict[str, object] = {}
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None or match.end() == pos:
            return None if text[pos:].strip() else out
        key, raw = match.groups()
        value: object = raw
        if raw[:1] in ("'", '"'):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        out[key] = value
        pos = match.end()
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per event: ``ts``, ``level``, ``logger``, ``event``, then every field of
    the line as a key of its own (pipelines filter on ``repository``, ``registry``, ``ref``). A
    line that is not all ``key=value`` keeps its text in ``fields``; a field named like one of
    the fixed keys gets a ``_`` after its name."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        data: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": event,
        }
        if rest:
            parsed = parse_fields(rest)
            if parsed is None:
                data["fields"] = rest
            else:
                for key, value in parsed.items():
                    data[key + "_" if key in _RESERVED else key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, sort_keys=False)


_formatter: logging.Formatter = TextFormatter()


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in the chosen format; quiet the chatty libraries."""
    global _formatter
    _formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; token-service URLs may carry scopes and account names.
    for name in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A library's warnings.warn() is a log line too (py.warnings), not free text on stderr.
    # Off first: captureWarnings(True) does nothing when it was on already, even if something
    # (a warnings.catch_warnings block ending) put the original warnings.showwarning back since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)


def say(text: str, *, event: str = "error", level: int = logging.ERROR) -> None:
    """Write ``text``, the program's own words for a person, to stderr: as it is, or with
    ``--log-format json`` as one JSON object like every log line (``event`` and ``message``
    keys), so that a pipeline reading stderr never meets a line that is not JSON."""
    if isinstance(_formatter, JsonFormatter):
        record = logging.LogRecord("watchdog.cli", level, __file__, 0, event, None, None)
        data = json.loads(_formatter.format(record))
        data["message"] = text
        line = json.dumps(data)
    else:
        line = text
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
