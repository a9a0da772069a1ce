"""Database fixtures (a pytest plugin, listed in tests/conftest.py).

* ``db_url``: the URL of a fresh, EMPTY database, once per backend: ``[sqlite]`` (a file under
  tmp_path) and ``[postgres]`` (a database of this test's own from ``WATCHDOG_TEST_PG_URL``;
  skipped with a reason when the variable is unset).
* ``store``: a ``Store`` on a fresh, migrated database, for both backends (builds on ``db_url``).
* ``pg_url``: a fresh, empty PostgreSQL database URL, for tests about PostgreSQL only.

The PostgreSQL parameters carry ``pytest.mark.postgres``, so ``-m postgres`` / ``-m "not
postgres"`` select them, and WATCHDOG_NO_SKIPS=1 (set by scripts/test) turns any skip into a failed run.
``WATCHDOG_TEST_PG_URL`` comes from ``.ci/postgres.sh`` (its last line of output); its role needs
CREATEDB.

Migrating, creating and dropping databases was a good part of the suite's time, so each worker
(tests/support/parallel.py) keeps what it can reuse, without a test seeing the difference:

* a test that uses ``store`` gets its database migrated already, once per worker: on SQLite a
  copy of a migrated file, on PostgreSQL a database from the worker's pool, emptied after its last
  test with ``TRUNCATE ... RESTART IDENTITY`` (ids start at 1 again). A database goes back to the
  pool only if its schema is still exactly the migrated one (tables, columns, indexes,
  constraints, the Alembic revision); otherwise it is dropped.
* an EMPTY PostgreSQL database (``db_url`` without ``store``, ``pg_url``) is always a new one.
* dropping happens on a thread of the worker's own, so a test does not wait for it.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import threading
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

# What a migrated schema is made of, to tell whether a test changed it.
_SCHEMA_QUERY = """
SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
    || ' ' || coalesce(column_default, '')
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'constraint', conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'schema', nspname FROM pg_namespace
  WHERE left(nspname, 3) <> 'pg_' AND nspname <> 'information_schema'
UNION ALL SELECT 'relation', relkind::text || ' ' || relname FROM pg_class
  WHERE relnamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


class _PostgresServer:
    """Creates, recycles and drops throw-away databases through one AUTOCOMMIT admin engine."""

    def __init__(self, base_url: str) -> None:
        self.base = sa.make_url(base_url)
        # pre-ping: a test may restart the PostgreSQL server under this pooled connection
        self.admin = sa.create_engine(
            self.base, isolation_level="AUTOCOMMIT", pool_size=1, pool_pre_ping=True
        )
        self._migrated: list[str] = []  # empty migrated databases, ready for a `store` test
        self._schema: list[tuple[str, str]] | None = None  # the migrated schema, as queried
        self._drops: queue.Queue[str | None] = queue.Queue()
        self._dropper = threading.Thread(target=self._drop_all, daemon=True)
        self._dropper.start()

    def _url(self, name: str) -> str:
        return self.base.set(database=name).render_as_string(hide_password=False)

    def create(self) -> str:
        """The URL of a new, empty database."""
        # the worker's id in the name: a database left behind says which worker made it
        name = f"{PG_PREFIX}{parallel.worker_id()}_{secrets.token_hex(6)}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self._url(name)

    def migrated(self) -> str:
        """The URL of an empty database migrated to head: from the pool, else made now."""
        if self._migrated:
            return self._url(self._migrated.pop())
        url = self.create()
        engine = db.create_engine(url)
        try:
            db.upgrade(engine)
            if self._schema is None:
                with engine.connect() as conn:
                    self._schema = self._schema_of(conn)
        except BaseException:
            engine.dispose()
            self._drops.put(sa.make_url(url).database or "")  # not left behind
            raise
        engine.dispose()
        return url

    def give_back(self, url: str, *, reusable: bool) -> None:
        """Done with ``url``: back to the pool if ``reusable`` (it was handed out migrated) and its
        schema is untouched, emptied; dropped otherwise."""
        name = sa.make_url(url).database
        assert name and name.startswith(PG_PREFIX)
        if reusable and self._empty_for_reuse(name):
            self._migrated.append(name)
        else:
            self._drops.put(name)

    def _empty_for_reuse(self, name: str) -> bool:
        try:
            with self.admin.connect() as conn:
                # whatever the test left connected (a failed test's engine) would hold locks
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            engine = sa.create_engine(self._url(name), isolation_level="AUTOCOMMIT", pool_size=1)
            try:
                with engine.connect() as conn:
                    if self._schema_of(conn) != self._schema:
                        return False
                    version = conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                    if [r[0] for r in version] != [db.head()]:
                        return False
                    names = conn.exec_driver_sql(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "AND tablename <> 'alembic_version'"
                    )
                    listed = ", ".join(f'"{r[0]}"' for r in names)
                    conn.exec_driver_sql(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
            finally:
                engine.dispose()
        except sa.exc.SQLAlchemyError:
            return False  # (the server restarted under the test, say): drop it
        return True

    @staticmethod
    def _schema_of(conn: sa.Connection) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in conn.exec_driver_sql(_SCHEMA_QUERY)]

    def _drop_all(self) -> None:
        while (name := self._drops.get()) is not None:
            self._drop(name)

    def _drop(self, name: str) -> None:
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
        for name in self._migrated:
            self._drops.put(name)
        self._migrated.clear()
        self._drops.put(None)
        self._dropper.join(timeout=120)
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


def _require(server: _PostgresServer | None) -> _PostgresServer:
    if server is None:
        pytest.skip(
            f'PostgreSQL tests need {PG_ENV} (e.g. {PG_ENV}="$(bash .ci/postgres.sh | tail -n 1)")'
        )
    return server


def _fresh_pg(server: _PostgresServer | None) -> Iterator[str]:
    server = _require(server)
    url = server.create()
    try:
        yield url
    finally:
        server.give_back(url, reusable=False)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, made once per worker, copied for each ``store`` test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "migrated.db"
    engine = db.create_engine(f"sqlite:///{path}")
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()  # the last connection's close checkpoints the WAL into the file
    return path


# db_url's of this worker that were handed out migrated (the test asked for `store`)
_migrated_urls: set[str] = set()


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, _pg_server: _PostgresServer | None
) -> Iterator[str]:
    """A fresh, empty database on each backend: ``sqlite`` and ``postgres`` (migrated already
    when the test also uses ``store``, which would migrate it first thing)."""
    migrated = "store" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "watchdog.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        url = f"sqlite:///{path}"
        if migrated:
            _migrated_urls.add(url)
        yield url
        _migrated_urls.discard(url)
        return
    server = _require(_pg_server)
    url = server.migrated() if migrated else server.create()
    if migrated:
        _migrated_urls.add(url)
    try:
        yield url
    finally:
        _migrated_urls.discard(url)
        server.give_back(url, reusable=migrated)


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
def store(engine: sa.Engine, db_url: str) -> repo.Store:
    """A ``Store`` on a fresh database migrated to head, on each backend."""
    if db_url not in _migrated_urls:
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
