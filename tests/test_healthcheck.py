"""``tag-watchdog health``, the image's HEALTHCHECK: it asks /healthz where the daemon listens
(http.listen of the same config and environment), not at a fixed 127.0.0.1:9797."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from watchdog import config, healthcheck


def test_a_daemon_on_another_port_and_a_wildcard_address_is_healthy_then_not(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str
) -> None:
    port = free_port()
    assert port != 9797
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        # a wildcard address: the probe asks it on loopback
        f"http: {{listen: '0.0.0.0:{port}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    proc = start_daemon(cfg, tmp_path)
    try:
        wait_for(lambda: http_status(port, "/healthz") == 200, what="the daemon")
        by_file = run("health", "-c", str(cfg), cwd=tmp_path)
        assert by_file.returncode == 0, by_file.stderr
        assert f"http://127.0.0.1:{port}/healthz" in by_file.stdout
        # the container's way: WATCHDOG_CONFIG, as the image sets it
        by_env = run("health", cwd=tmp_path, env={"WATCHDOG_CONFIG": str(cfg)})
        assert by_env.returncode == 0, by_env.stderr
        # WATCHDOG_HTTP_LISTEN overrides the file for the probe as it does for the daemon
        other = run(
            "health",
            cwd=tmp_path,
            env={"WATCHDOG_CONFIG": str(cfg), "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{free_port()}"},
        )
        assert other.returncode == 1 and "did not answer" in other.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    gone = run("health", "-c", str(cfg), "--log-format", "json", cwd=tmp_path)
    assert gone.returncode == 1  # Docker's "unhealthy" (never 2, which Docker reserves)
    assert '"event": "unhealthy"' in gone.stderr and f":{port}/healthz" in gone.stderr


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9797", "http://127.0.0.1:9797/healthz"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080/healthz"),
        ("[::]:8080", "http://[::1]:8080/healthz"),
        ("[::1]:9000", "http://[::1]:9000/healthz"),
        ("10.1.2.3:9797", "http://10.1.2.3:9797/healthz"),
        ("watchdog.internal:80", "http://watchdog.internal:80/healthz"),
    ],
)
def test_probe_url_follows_the_listen_address(listen: str, url: str) -> None:
    assert healthcheck.probe_url(config.HttpSettings(listen=listen)) == url


def test_the_config_is_the_daemons_own_when_the_probe_is_not_told(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    cmdline = proc / "1" / "cmdline"
    env = {"WATCHDOG_CONFIG": "/etc/tag-watchdog/config.yaml"}
    # PID 1 is the image's daemon, started with another -c: that file
    cmdline.write_bytes(b"/opt/tag-watchdog/bin/tag-watchdog\0run\0-c\0/cfg/other.yaml\0")
    assert healthcheck.config_path(None, env, proc) == "/cfg/other.yaml"
    # as the kernel runs the console script (its shebang): the interpreter first
    cmdline.write_bytes(
        b"/opt/tag-watchdog/bin/python\0/opt/tag-watchdog/bin/tag-watchdog\0run\0-c\0/cfg/s.yaml\0"
    )
    assert healthcheck.config_path(None, env, proc) == "/cfg/s.yaml"
    assert healthcheck.config_path("/given.yaml", env, proc) == "/given.yaml"
    cmdline.write_bytes(b"python3\0-m\0watchdog\0run\0--config=/cfg/m.yaml\0")
    assert healthcheck.config_path(None, env, proc) == "/cfg/m.yaml"
    # PID 1 without -c (the config from the environment), or not the daemon at all: the env's
    cmdline.write_bytes(b"/opt/tag-watchdog/bin/tag-watchdog\0run\0--log-format\0json\0")
    assert healthcheck.config_path(None, env, proc) == env["WATCHDOG_CONFIG"]
    for other in (b"/sbin/init\0-c\0/x.yaml\0run\0", b"python3\0/srv/app.py\0run\0-c\0/x.yaml\0"):
        cmdline.write_bytes(other)
        assert healthcheck.config_path(None, env, proc) == env["WATCHDOG_CONFIG"]
    cmdline.unlink()  # not readable (another system): the env's, else the defaults
    assert healthcheck.config_path(None, env, proc) == env["WATCHDOG_CONFIG"]
    assert healthcheck.config_path(None, {}, proc) is None
