"""Database fixtures (a pytest plugin, listed in tests/conftest.py).

* ``db_url``: the URL of a fresh, EMPTY database, once per backend: ``[sqlite]`` (a file under
  tmp_path) and ``[postgres]`` (a database created for this test from ``WATCHDOG_TEST_PG_URL`` and
  dropped afterwards; skipped with a reason when the variable is unset).
* ``store``: a ``Store`` on a fresh, migrated database, for both backends (builds on ``db_url``).
* ``pg_url``: a fresh, empty PostgreSQL database URL, for tests about PostgreSQL only.

The PostgreSQL parameters carry ``pytest.mark.postgres``, so ``-m postgres`` / ``-m "not
postgres"`` select them, and WATCHDOG_NO_SKIPS=1 (set by scripts/test) turns any skip into a failed run.
``WATCHDOG_TEST_PG_URL`` comes from ``.ci/postgres.sh`` (its last line of output); its role needs
CREATEDB.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import parallel
from watchdog.store import db, repo

PG_ENV = "WATCHDOG_TEST_PG_URL"
PG_PREFIX = "watchdog_t_"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


class _PostgresServer:
    """Creates and drops throw-away databases through one AUTOCOMMIT admin engine."""

    def __init__(self, base_url: str) -> None:
        self.base = sa.make_url(base_url)
        # pre-ping: a test may restart the PostgreSQL server under this pooled connection
        self.admin = sa.create_engine(
            self.base, isolation_level="AUTOCOMMIT", pool_size=1, pool_pre_ping=True
        )

    def create(self) -> str:
        # the worker's id in the name: a database left behind says which worker made it
        name = f"{PG_PREFIX}{parallel.worker_id()}_{secrets.token_hex(6)}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        assert name and name.startswith(PG_PREFIX)
        for attempt in range(5):
            try:
                with self.admin.connect() as conn:
                    # FORCE: a test that failed half-way may still hold connections open.
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except sa.exc.DBAPIError as exc:
                # Seen once with suites running side by side: InsufficientPrivilege, a session
                # FORCE may not end (another role's, briefly). The database is a throw-away in a
                # throw-away cluster: try again a few times, then leave it and say so.
                if attempt == 4:
                    warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=1)
                    return
                time.sleep(0.5)

    def close(self) -> None:
        self.admin.dispose()


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[_PostgresServer | None]:
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    server = _PostgresServer(url)
    try:
        yield server
    finally:
        server.close()


def _fresh_pg(server: _PostgresServer | None) -> Iterator[str]:
    if server is None:
        pytest.skip(
            f'PostgreSQL tests need {PG_ENV} (e.g. {PG_ENV}="$(bash .ci/postgres.sh | tail -n 1)")'
        )
    url = server.create()
    try:
        yield url
    finally:
        server.drop(url)


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, _pg_server: _PostgresServer | None
) -> Iterator[str]:
    """A fresh, empty database on each backend: ``sqlite`` and ``postgres``."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'watchdog.db'}"
        return
    yield from _fresh_pg(_pg_server)


@pytest.fixture(params=[pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def pg_url(_pg_server: _PostgresServer | None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (skipped when WATCHDOG_TEST_PG_URL is unset)."""
    yield from _fresh_pg(_pg_server)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """``db.create_engine(db_url)``, disposed after the test."""
    engine = db.create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> repo.Store:
    """A ``Store`` on a fresh database migrated to head, on each backend."""
    db.upgrade(engine)
    return repo.Store(engine)


@pytest.fixture
def next_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pretend to be a release whose migrations have a revision ``9999`` after this one's head."""
    scripts = tmp_path / "migrations"
    shutil.copytree(db.script_location(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_next.py").write_text(
        f'''"""The next release's change."""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "{db.head()}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("next_release", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("next_release")
'''
    )
    monkeypatch.setattr(db, "script_location", lambda: str(scripts))
    return "9999"


@pytest.fixture
def alerting(store: repo.Store) -> repo.Store:
    """``store`` with the Slack channel configured: events it records queue their alerts."""
    return repo.Store(store.engine, channels=("slack",))
