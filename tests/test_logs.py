"""Structured logs (watchdog/logs.py): one event per line, ``key=value`` text by default or one
JSON object per line with ``--log-format json``; values with spaces or newlines are quoted by the
call sites (``%r``, house style) and stay on their line; the chatty libraries are kept quiet.

First the formatters through ``logs.setup`` on real log records, then the real program: a
``tag-watchdog scan`` against a real registry and a dead one, every line of its stderr read back.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import run
from tests.support.registry import free_port
from tests.support.slack_standin import SlackStandIn
from watchdog import logs

QUIETED = ("httpx", "httpcore", "apscheduler", "uvicorn.access", "alembic")
TEXT_LINE = re.compile(
    r"ts=(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) level=(?P<level>[a-z]+) "
    r"logger=(?P<logger>\S+) (?P<message>.*)"
)
# key=value, the value bare (no space) or a Python literal in quotes, as ``%r`` writes it
PAIR = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")


def pairs(fields: str) -> dict[str, str]:
    """``repository=a/b error='x y'`` -> ``{"repository": "a/b", "error": "x y"}``; fails on
    anything that is not a sequence of key=value pairs."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(fields):
        match = PAIR.match(fields, pos)
        assert match, f"not key=value at {fields[pos:]!r}"
        key, raw = match.groups()
        out[key] = ast.literal_eval(raw) if raw[:1] in "'\"" and raw else raw
        pos = match.end()
        if pos < len(fields):
            assert fields[pos] == " ", f"pairs are separated by one space: {fields!r}"
            pos += 1
    return out


class Stderr:
    """What ``logs.setup`` writes: it logs to the ``sys.stderr`` of the moment, here capsys's."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.seen = ""

    def getvalue(self) -> str:
        self.seen += self.capsys.readouterr().err
        return self.seen


@pytest.fixture
def stream(capsys: pytest.CaptureFixture[str]) -> Iterator[Stderr]:
    """The stderr of ``logs.setup``; the logging set-up of the test run put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIETED})
    yield Stderr(capsys)
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def _log_samples() -> None:
    log = logging.getLogger("watchdog.service")
    log.warning(
        "check_failed repository=%s error=%r", "ghcr.io/acme/app", "HTTP 503: 'down'\nretry"
    )
    log.info("stopped")
    log.debug("not shown at info")


def test_text_is_one_key_value_line_per_event(stream: Stderr) -> None:
    logs.setup("info", "text")
    _log_samples()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # the debug line is below the level
    first = TEXT_LINE.fullmatch(lines[0])
    assert first, lines[0]
    assert (first["level"], first["logger"]) == ("warning", "watchdog.service")
    event, _, fields = first["message"].partition(" ")
    assert event == "check_failed"
    # the newline and both kinds of quote inside the value stay inside the quoted value
    assert pairs(fields) == {"repository": "ghcr.io/acme/app", "error": "HTTP 503: 'down'\nretry"}
    # the timestamp is UTC with milliseconds, and it is now
    ts = dt.datetime.fromisoformat(first["ts"])
    assert abs(ts - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    second = TEXT_LINE.fullmatch(lines[1])
    assert second and (second["level"], second["message"]) == ("info", "stopped")


def test_json_is_one_object_per_line_with_the_event_name(stream: Stderr) -> None:
    logs.setup("info", "json")
    _log_samples()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert {k: first[k] for k in ("level", "logger", "event")} == {
        "level": "warning",
        "logger": "watchdog.service",
        "event": "check_failed",
    }
    assert first["ts"].endswith("Z")
    assert abs(dt.datetime.fromisoformat(first["ts"]) - dt.datetime.now(dt.UTC)) < dt.timedelta(
        minutes=1
    )
    # every field is a key of its own, the quoted value unquoted
    assert (first["repository"], first["error"]) == ("ghcr.io/acme/app", "HTTP 503: 'down'\nretry")
    assert "fields" not in first
    assert second == {k: second[k] for k in ("ts", "level", "logger", "event")}
    assert (second["event"], "fields" in second) == ("stopped", False)


def test_json_fields_are_keys_of_their_own(stream: Stderr) -> None:
    logs.setup("info", "json")
    _log_samples()
    first = json.loads(stream.getvalue().splitlines()[0])
    assert first["repository"] == "ghcr.io/acme/app"
    assert first["error"] == "HTTP 503: 'down'\nretry"


def test_text_keeps_an_event_on_one_line_whatever_its_values(stream: Stderr) -> None:
    logs.setup("info", "text")
    logging.getLogger("watchdog.api").warning("api_refused path=%s", "/api/v1/x\nlevel=error")
    assert len(stream.getvalue().splitlines()) == 1
    assert "path=/api/v1/x\\x0alevel=error" in stream.getvalue()  # shown, escaped


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_belongs_to_its_event(stream: Stderr, fmt: str) -> None:
    """Unexpected failures only: the text format puts the traceback on the lines after its event
    line, JSON inside the one object."""
    logs.setup("info", fmt)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("watchdog.daemon").exception("check_crashed repository=%s", "a/b")
    logging.getLogger("watchdog.daemon").info("stopped")
    lines = stream.getvalue().splitlines()
    if fmt == "json":
        assert len(lines) == 2
        crashed = json.loads(lines[0])
        assert crashed["event"] == "check_crashed" and crashed["level"] == "error"
        assert crashed["exception"].startswith("Traceback (most recent call last):")
        assert crashed["exception"].endswith("RuntimeError: boom")
    else:
        events = [i for i, line in enumerate(lines) if TEXT_LINE.fullmatch(line)]
        assert events == [0, len(lines) - 1]  # the traceback lines are no events of their own
        assert "check_crashed repository=a/b" in lines[0]
        assert lines[1] == "Traceback (most recent call last):"
        assert lines[-2] == "RuntimeError: boom"


def test_setup_replaces_its_handler_and_keeps_request_urls_out_of_debug_logs(
    stream: Stderr, standin: SlackStandIn
) -> None:
    """httpx logs every request URL at INFO (token-service URLs carry scopes and account names):
    even at debug, no line of it; set up twice, still one line per event."""
    logs.setup("debug", "text")
    logs.setup("debug", "text")
    secret_url = f"{standin.webhook_url}?account=someone"
    assert httpx.post(secret_url, json={"text": "x"}, timeout=5).status_code == 200
    logging.getLogger("watchdog.test").debug("after_request")
    lines = stream.getvalue().splitlines()
    assert [line for line in lines if "after_request" in line] == [lines[-1]]
    assert not [line for line in lines if "logger=httpx" in line or "logger=httpcore" in line]
    assert standin.webhook_url not in stream.getvalue()
    assert all(logging.getLogger(n).level == logging.WARNING for n in QUIETED)


# --- the real program ----------------------------------------------------------------------------


def _scan(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, fmt: str
) -> tuple[list[str], str]:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = tmp_path / f"{fmt}.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / (fmt + '.db')}\n"
        f"watches: ['{registry.host}/{repo}', '{dead}/gone/app']\n"
    )
    proc = run("scan", "-c", str(cfg), "--log-level", "debug", "--log-format", fmt, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr  # the dead registry: could not complete
    # stderr holds the log lines and the program's own words for a person ("tag-watchdog: ...")
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("tag-watchdog: ")]
    return lines, dead


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_scan_writes_every_log_line_as_one_event(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    fmt: str,
) -> None:
    pusher.image(repo, "1.0.0", seed="a")
    lines, dead = _scan(tmp_path, registry, repo, fmt)
    assert lines
    if fmt == "json":
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"ts", "level", "logger", "event"} <= set(e) for e in events)
        failed = [e for e in events if e["event"] == "check_failed"]
        assert len(failed) == 1 and failed[0]["level"] == "warning"
        fields = failed[0]  # every field a key of its own
        # the watchdog's own lines are key=value pairs only (a library's free text stays text)
        assert not [e for e in events if "fields" in e and e["logger"].startswith("watchdog")]
        loggers = {e["logger"] for e in events}
    else:
        matches = [TEXT_LINE.fullmatch(line) for line in lines]
        assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
        failed_lines = [m for m in matches if m and m["message"].startswith("check_failed ")]
        assert len(failed_lines) == 1 and failed_lines[0]["level"] == "warning"
        fields = pairs(failed_lines[0]["message"].partition(" ")[2])
        loggers = {m["logger"] for m in matches if m}
    assert fields["repository"] == f"{dead}/gone/app"
    assert dead in fields["error"] and "cannot connect" in fields["error"]
    # the real registry answered requests, yet no request line (with its URL) was logged
    assert not loggers & {"httpx", "httpcore"}, loggers
    assert not any(f"{registry.host}/v2/" in line for line in lines)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ref=ghcr.io/a/b:1.0 digest=sha256:abc",
            {"ref": "ghcr.io/a/b:1.0", "digest": "sha256:abc"},
        ),
        ("error='it said \"no\"' n=3", {"error": 'it said "no"', "n": "3"}),
        ('error="it\'s down"', {"error": "it's down"}),
        ("error='a\\nb'", {"error": "a\nb"}),
        ("empty= next=x", {"empty": "", "next": "x"}),
        ("1 alert(s) not delivered yet", None),  # not pairs: kept as text
        ("ref=a trailing words", None),
        ("", {}),
    ],
)
def test_parse_fields(text: str, expected: dict[str, object] | None) -> None:
    assert logs.parse_fields(text) == expected


def test_json_keeps_free_text_and_renames_a_field_named_like_a_fixed_key(stream: Stderr) -> None:
    logs.setup("info", "json")
    log = logging.getLogger("watchdog.cli")
    log.warning("alerts_pending 1 alert(s) not delivered yet")
    log.warning("odd level=high event=x repository=r")
    free, odd = (json.loads(line) for line in stream.getvalue().splitlines())
    assert free["event"] == "alerts_pending" and free["fields"] == "1 alert(s) not delivered yet"
    assert (odd["level"], odd["event"], odd["level_"], odd["event_"]) == (
        "warning",
        "odd",
        "high",
        "x",
    )
    assert odd["repository"] == "r"
