"""A docker credential helper that hangs is ended with everything it started: it runs in a
session (process group) of its own, and the whole group is killed at the timeout."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from watchdog import config, errors
from watchdog.registry import credentials


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _helper(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_hanging_helper_is_killed_with_its_children(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    pidfile = tmp_path / "child.pid"
    # like a helper waiting on a keyring prompt: a child of its own that never ends
    _helper(bindir, "hang", f"/bin/sleep 300 &\necho $! > {pidfile}\nwait\n")
    cfg = tmp_path / "docker"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credsStore": "hang"}))
    env = {"DOCKER_CONFIG": str(cfg), "PATH": f"{bindir}{os.pathsep}/usr/bin:/bin"}
    started = time.monotonic()
    with pytest.raises(errors.AuthError, match=r"timed out after 0\.5s"):
        credentials.run_credential_helper("hang", "registry.example", env, timeout=0.5)
    assert time.monotonic() - started < 5  # abandoned at the timeout, not when the child ends
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, 9)  # leave nothing behind, even when the assertion below fails
    assert not alive, "the helper's child outlived the timeout"


def test_a_helper_that_answers_still_works(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    _helper(
        bindir,
        "ok",
        'read -r server\nprintf \'{"ServerURL":"%s","Username":"u","Secret":"s3"}\' "$server"\n',
    )
    env = {"PATH": f"{bindir}{os.pathsep}/usr/bin:/bin"}
    creds = credentials.run_credential_helper("ok", "registry.example", env, timeout=5)
    assert creds is not None and creds.username == "u"
    assert creds.password == config.Secret("s3")
