"""Run the real ``tag-watchdog`` program in a subprocess, as a user or a CI job would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
