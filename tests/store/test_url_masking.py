"""A database password never shows, whatever it holds (a ``/`` of a base64 password, ``?``,
``:``) or wherever the URL gives it (``?password=``): in ``config check``, ``db upgrade``, the
daemon's ``started`` line and the errors of a database that cannot be reached. One masking,
``config.mask_url``, which reads a URL as SQLAlchemy does; what it cannot read shows as ``***``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.cli import clean_env, run, wait_for
from tests.support.registry import free_port
from watchdog import config, errors
from watchdog.store import db

B64 = "q/Zx+7Kp/aB9=="  # a base64 password: "/" and "+" and "="

URLS = [
    f"postgresql+psycopg://wd:{B64}@db.example:5432/wd",
    f"postgresql+psycopg://wd:{B64}@db.example/wd?sslmode=require",
    "postgresql+psycopg://wd:p?w:d/x@db.example/wd",
    f"postgresql+psycopg://wd@db.example/wd?password={B64}&sslmode=require",
    f"postgresql+psycopg://wd@db.example/wd?sslmode=require&sslpassword={B64}",
    "postgresql+psycopg://wd:p%40ss%2Fw@[::1]:5432/wd",
    "postgresql+psycopg://db.example:5432/wd",
    "sqlite:////var/lib/tag-watchdog/watchdog.db",
]


def _secrets_of(url: str) -> list[str]:
    parsed = make_url(url)
    found = [parsed.password] if parsed.password else []
    found += [v for k, v in parsed.query.items() if k in ("password", "sslpassword")]
    return [str(s) for s in found]


@pytest.mark.parametrize("url", URLS)
def test_mask_url_reads_a_url_as_sqlalchemy_does(url: str) -> None:
    shown = config.mask_url(url)
    for secret in _secrets_of(url):
        assert secret not in shown
        assert "***" in shown
    # nothing but the passwords changed: the masked URL names the same server and database
    original, masked = make_url(url), make_url(shown)
    assert (masked.username, masked.host, masked.port, masked.database) == (
        original.username,
        original.host,
        original.port,
        original.database,
    )
    assert {k: v for k, v in masked.query.items() if v != "***"} == {
        k: v for k, v in original.query.items() if k not in ("password", "sslpassword")
    }
    assert db.mask_url(make_url(url)) == db.mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "host=db.example password=s3cret-PW dbname=wd",  # a libpq conninfo, not a URL
        "postgresql+psycopg://wd:s3cret@PW@db.example/wd",  # "@" unescaped: part would be the host
        "${broken://wd:s3cret-PW@db/wd",
    ],
)
def test_what_does_not_parse_is_masked_whole(url: str) -> None:
    assert config.mask_url(url) == "***"


@pytest.mark.postgres
def test_errors_of_an_unreachable_or_refusing_database_hide_the_password(pg_url: str) -> None:
    good = make_url(pg_url)
    wrong = good.set(password=B64 + "-WRONG")
    closed = good.set(port=free_port(), password=B64)
    query = good.set(password=None, port=free_port()).update_query_dict({"password": B64})
    for url, reason in (
        (wrong, "password authentication failed"),
        (closed, "connection refused"),
        (query, "connection refused"),
    ):
        text = url.render_as_string(hide_password=False)
        with pytest.raises(errors.DatabaseUnavailable) as caught:
            db.upgrade(text)
        message = str(caught.value)
        assert reason in message
        assert B64 not in message and B64.replace("/", "%2F") not in message
        assert "***" in message


def _config(tmp_path: Path, url: str, port: int = 9797) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"database_url: '{url}'\nhttp: {{listen: '127.0.0.1:{port}'}}\n"
        "watches: ['127.0.0.1:5000/a/b']\ninterval: 1h\n"
    )
    return path


@pytest.mark.parametrize("url", [URLS[2], URLS[3]])
def test_config_check_hides_the_password(tmp_path: Path, url: str) -> None:
    path = _config(tmp_path, url)
    text = run("config", "check", "-c", str(path))
    as_json = run("config", "check", "--json", "-c", str(path))
    assert text.returncode == as_json.returncode == 0, text.stderr + as_json.stderr
    assert B64 not in text.stdout + as_json.stdout and "p?w:d" not in text.stdout
    assert "***" in json.loads(as_json.stdout)["database_url"]


@pytest.mark.postgres
def test_db_upgrade_and_the_started_line_hide_a_query_string_password(
    tmp_path: Path, pg_url: str
) -> None:
    good = make_url(pg_url)
    assert good.password
    secret = str(good.password)
    url = good.set(password=None).update_query_dict({"password": secret})
    port = free_port()
    path = _config(tmp_path, url.render_as_string(hide_password=False), port)
    upgraded = run("db", "upgrade", "-c", str(path))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"password={secret}" not in upgraded.stdout + upgraded.stderr
    assert "password=***" in upgraded.stdout
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "run", "-c", str(path)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "log", "w"),  # noqa: SIM115  # closed with the process
        text=True,
    )
    try:
        line = wait_for(
            lambda: next(
                (x for x in (tmp_path / "log").read_text().splitlines() if " started " in x), None
            ),
            what="the started line",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    assert "password=***" in line and f"password={secret}" not in line
