"""`make demo` keeps working: it is run as a user runs it and must end with the release put back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.cli import clean_env

ROOT = Path(__file__).resolve().parents[1]


def test_demo_puts_the_release_back() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "bytes fetched by tag identical to the original release: True" in out
    assert "platform manifests present: True" in out
    assert "moved sha256:" in out  # the alert's fallback text
    assert "restored" in out and "Traceback" not in out + proc.stderr
