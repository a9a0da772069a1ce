"""What tag-watchdog prints on a terminal from outside (a registry's error body, a reason) cannot
drive the terminal: control characters are shown escaped (terminal.safe), in ``scan``'s lines,
error messages, tables and text log lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.support import faultproxy, images
from tests.support.cli import run
from watchdog import logs, terminal

# clear the screen, home, a fake verdict on a line of its own, a window title, a hyperlink,
# a C1 CSI (red), a carriage return, DEL and a bidi override
HOSTILE = (
    "\x1b[2J\x1b[Hall 12 watches OK\n\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\click"
    "\x1b]8;;\x1b\\\x9b31m\rover\x7f\u202eevil"
)


def _controls(text: str) -> list[str]:
    return [
        c
        for c in text
        if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 or c == "\u202e"
    ]


@pytest.mark.parametrize(
    ("text", "multiline", "shown"),
    [
        ("plain text, tab\there", False, "plain text, tab\there"),
        ("a\nb", False, "a\\x0ab"),
        ("a\nb", True, "a\nb"),
        ("\x1b[2J\r\x00\x7f\x9b\x85", True, "\\x1b[2J\\x0d\\x00\\x7f\\x9b\\x85"),
        ("\u202eevil\u2028x", False, "\\u202eevil\\u2028x"),
        ("café ☃ 日本", False, "café ☃ 日本"),
    ],
)
def test_safe(text: str, multiline: bool, shown: str) -> None:
    assert terminal.safe(text, multiline=multiline) == shown


def test_text_log_lines_stay_one_line_and_inert() -> None:
    record = logging.LogRecord(
        "watchdog.x", logging.WARNING, __file__, 1, "check_failed error=%s", (HOSTILE,), None
    )
    line = logs.TextFormatter().format(record)
    assert "\n" not in line and not _controls(line)
    assert "\\x1b[2J" in line
    as_json = logs.JsonFormatter().format(record)  # json.dumps escapes them already
    assert "\n" not in as_json and not _controls(as_json)
    assert json.loads(as_json)["fields"] == "error=" + HOSTILE  # the text itself, kept


@pytest.mark.registry
def test_scan_shows_a_hostile_error_body_escaped(
    tmp_path: Path, fault_proxy: faultproxy.FaultProxy, repo: str, pusher: images.Pusher
) -> None:
    pusher.image(repo, "1.0.0", seed="a")
    fault_proxy.fail(
        "GET", r"/tags/list", 403, body=HOSTILE, headers={"Content-Type": "text/plain"}
    )
    path = tmp_path / "c.yaml"
    path.write_text(
        f"database_url: sqlite:///{tmp_path}/w.db\nwatches: ['{fault_proxy.host}/{repo}']\n"
    )
    proc = run("scan", "-c", str(path), "--log-format", "text", cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "could not check" in proc.stdout and "\\x1b[2J" in proc.stdout, proc.stdout
    for output in (proc.stdout, proc.stderr):
        assert not _controls(output), output
    assert not any(line.startswith("all 12 watches OK") for line in proc.stdout.splitlines())
