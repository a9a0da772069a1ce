"""Structured logging: one event per line, ``key=value`` text or JSON (``--log-format json``).

Log calls in the code read like ``log.warning("tag_moved ref=%s old=%s", ...)``: the first word is
the event name. Secrets never reach a log call: settings hold them as ``config.Secret``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = f"ts={ts[:-4]}Z level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        if record.exc_info:
            # Unexpected failures only: expected ones are logged without a traceback.
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
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
            data["fields"] = rest
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, sort_keys=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every log line to stderr in the chosen format; quiet the chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; token-service URLs may carry scopes and account names.
    for name in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
