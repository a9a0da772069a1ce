"""Run the real ``tag-watchdog`` program in a subprocess, as a user or a CI job would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import httpx

T = TypeVar("T")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any WATCHDOG_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    env.update(extra or {})
    return env


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m watchdog ARGS`` to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "watchdog", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(env),
        timeout=timeout,
    )


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    what: str = "the condition",
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` every 0.1 s until it returns something truthy; return it, or fail
    (with what ``explain`` says, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    more = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{more}")


def http_status(port: int, path: str = "/readyz") -> int:
    """The status of ``GET http://127.0.0.1:PORT/PATH`` from the daemon, 0 when it does not answer
    (not listening yet, or gone): ``wait_for(lambda: http_status(port) == 200)`` waits until it is
    ready."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=3).status_code
    except httpx.TransportError:
        return 0


def start_daemon(
    config: Path, cwd: Path, env: dict[str, str] | None = None, *, log: IO[str] | None = None
) -> subprocess.Popen[str]:
    """``tag-watchdog run -c CONFIG`` in the background, stderr (its log) captured as text, or
    written to ``log`` (an open file: nothing to read before the pipe fills)."""
    return subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "-c", str(config)],
        cwd=cwd,
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if log is None else log,
        text=True,
    )
