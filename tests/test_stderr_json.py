"""With ``--log-format json`` every line the program writes to stderr is one JSON object: the log
lines and the program's own words for a person ("1 alert(s) not delivered yet", errors, usage
errors) alike, so that a log pipeline reading stderr never meets free text."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import run
from tests.support.registry import free_port
from tests.support.slack_standin import Answer, SlackStandIn
from watchdog import logs


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not JSON on stderr: {line!r}") from None
    assert all({"ts", "level", "logger", "event"} <= set(e) for e in events), events
    return events


def test_scan_writes_only_json_to_stderr_including_its_own_notes(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    standin: SlackStandIn,
) -> None:
    pusher.image(repo, "1.0.0", seed="a")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: "some checks could not complete"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        f"slack: {{webhook_url: '{standin.webhook_url}'}}\n"
        f"watches: ['{registry.host}/{repo}', '{dead}/gone/app']\n"
    )
    first = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    pusher.image(repo, "1.0.0", seed="b")  # moved: one alert, which Slack puts off for an hour
    standin.fail_next(Answer(429, "rate_limited", (("Retry-After", "3600"),)))

    proc = run("scan", "-c", str(cfg), "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # drift found (and another watch failed)
    events = _json_lines(proc.stderr)
    by_event = {e["event"]: e for e in events}
    queued = by_event["alerts_queued"]
    assert queued["message"].startswith("tag-watchdog: 1 alert(s) not delivered yet")
    assert "checks_incomplete" in by_event and "check_failed" in by_event
    assert "1 moved" in proc.stdout  # the report itself stays on stdout, as text


def test_errors_and_usage_errors_are_json_too(tmp_path: Path) -> None:
    no_config = run("scan", "--log-format", "json", cwd=tmp_path)
    assert no_config.returncode == 2
    [error] = _json_lines(no_config.stderr)
    assert error["event"] == "error" and error["level"] == "error"
    assert "no configuration" in error["message"]

    usage = run("history", "--log-format=json", cwd=tmp_path)  # REF missing: argparse's error
    assert usage.returncode == 2
    [error] = _json_lines(usage.stderr)
    assert error["event"] == "usage_error" and "REF" in error["message"]

    text = run("history", cwd=tmp_path)  # without the flag: argparse's usual text
    assert text.returncode == 2 and text.stderr.startswith("usage: ")


def test_a_library_warning_and_the_programs_own_words_are_json_lines_in_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logs.setup("warning", "json")
            warnings.warn("this option is deprecated", DeprecationWarning, stacklevel=1)
            logs.say("tag-watchdog: interrupted", event="interrupted")
            logging.captureWarnings(False)
        logs.setup("warning", "text")
        logs.say("tag-watchdog: as it is")
    finally:
        root.handlers[:], root.level = saved
    *lines, text = capsys.readouterr().err.splitlines()
    warned, said = _json_lines("\n".join(lines))
    assert warned["logger"] == "py.warnings" and warned["level"] == "warning"
    assert "this option is deprecated" in json.dumps(warned)
    assert said["event"] == "interrupted" and said["message"] == "tag-watchdog: interrupted"
    assert text == "tag-watchdog: as it is"  # text logs: the words as they are
