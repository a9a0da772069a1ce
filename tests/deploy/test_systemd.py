"""deploy/systemd/tag-watchdog.service: `systemd-analyze verify` (Debian's systemd; no running
systemd needed) accepts it without a single warning, `systemd-analyze security --offline` rates it
well, and its stop timeout outlasts the daemon's own shutdown grace.

`verify` checks that the commands exist, so it runs on a scratch root holding the unit, a stand-in
for /opt/tag-watchdog/bin/tag-watchdog and a copy of this machine's system units (the targets the
unit is ordered against).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from watchdog import daemon

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "tag-watchdog.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def scratch_root(tmp_path: Path, unit_text: str, name: str = UNIT.name) -> Path:
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / name).write_text(unit_text)
    for command in {v.split()[0] for v in re.findall(r"^Exec\w+=(.+)$", unit_text, re.M)}:
        stand_in = root / command.lstrip("-@!+:").lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return root


def verify(
    tmp_path: Path, unit_text: str, name: str = UNIT.name
) -> subprocess.CompletedProcess[str]:
    root = scratch_root(tmp_path, unit_text, name)
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", f"/etc/systemd/system/{name}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    result = verify(tmp_path, UNIT.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_catch_a_misspelt_directive(tmp_path: Path) -> None:
    # The control for the test above: systemd ignores unknown keys with a warning and exit 0,
    # so "no output" is what makes the check strict.
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = verify(tmp_path, broken)
    assert "Unknown key" in result.stderr and "ProtectSytem" in result.stderr


def test_security_review_rates_the_unit_ok(tmp_path: Path) -> None:
    root = scratch_root(tmp_path, UNIT.read_text())
    result = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=yes",
            f"--root={root}",
            "--no-pager",
            f"/etc/systemd/system/{UNIT.name}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert level, result.stdout + result.stderr
    # 0 is a unit that can do nothing, 10 an unprotected one; under 2 is "OK" in systemd's words
    assert float(level.group(1)) < 2.0, result.stdout


def test_hardening_user_state_and_secrets() -> None:
    d = directives(UNIT.read_text())
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "tag-watchdog",
        "WorkingDirectory": "/var/lib/tag-watchdog",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "EnvironmentFile": "-/etc/tag-watchdog/env",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert d["SystemCallFilter"][0] == "@system-service"
    assert "WATCHDOG_CONFIG=/etc/tag-watchdog/config.yaml" in d["Environment"][0].split()
    assert d["ExecStartPre"] == ["/opt/tag-watchdog/bin/tag-watchdog db upgrade"]
    assert d["ExecStart"] == ["/opt/tag-watchdog/bin/tag-watchdog run"]
    # a config error (exit 2) is not retried in a loop
    assert d["RestartPreventExitStatus"] == ["2"]


def test_stop_waits_longer_than_the_daemons_grace() -> None:
    d = directives(UNIT.read_text())
    assert d["KillSignal"] == ["SIGTERM"]
    (timeout,) = d["TimeoutStopSec"]
    seconds = int(timeout.removesuffix("s"))
    # running checks get SHUTDOWN_GRACE, then the alert outbox SHUTDOWN_GRACE again
    assert seconds > 2 * daemon.SHUTDOWN_GRACE
