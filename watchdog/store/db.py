"""The database edge: engines, the schema check, Alembic, and error translation.

Everything SQLAlchemy or a driver raises becomes an ``errors.StoreError`` here, once: connection
problems are ``DatabaseUnavailable`` (temporary), a missing or foreign schema is
``SchemaMismatch``. Messages are one line and never contain the database password.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url

from watchdog import config, errors
from watchdog.store import tables

_VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps

SchemaStatus = Literal["empty", "current", "outdated", "newer"]

UPGRADE_HINT = "run `tag-watchdog db upgrade -c CONFIG`"

# The retry budget of a write under another SQLite writer: SQLite's busy handler retries the lock,
# sleeping in between, for this long. Long enough to ride out a checkpoint, a CLI command or an
# operator's short transaction; short enough that a stuck writer surfaces as a failed check (the
# next cycle does the work) rather than a hung daemon.
SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 10

# Any constant works: it only has to be the same for every tag-watchdog that migrates a database.
_MIGRATION_LOCK_KEY = 0x7461_6777_6463_6801  # "tagwdch" + 1

# SQLSTATEs that mean "this is not the schema I expect".
_PG_SCHEMA_STATES = {"42P01", "42703"}  # undefined_table, undefined_column
# SQLSTATE classes that mean "the server cannot be used right now": connection exception, invalid
# authorization, insufficient resources, operator intervention (shutdown), system error.
_PG_UNAVAILABLE_CLASSES = {"08", "28", "53", "57", "58"}


def create_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///FILE`` or ``postgresql+psycopg://...``).

    Does not connect: the first query does. SQLite gets WAL, a busy timeout, foreign keys and real
    transactions (BEGIN emitted by SQLAlchemy, so DDL and SELECTs are transactional too).
    PostgreSQL gets pre-ping, so connections dropped by a server restart are replaced silently.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as e:
        raise errors.ConfigError([f"database_url: not a database URL: {mask_url(url)}"]) from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or "mode=memory" in url:
            raise errors.ConfigError(
                [
                    "database_url: SQLite needs a file (sqlite:///path/to/watchdog.db), "
                    f"got {mask_url(url)}"
                ]
            )
        engine = sa.create_engine(parsed)
        event.listen(engine, "do_connect", _sqlite_create_private)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "postgresql"):
            raise errors.ConfigError(
                [
                    f"database_url: use the psycopg 3 driver (postgresql+psycopg://...), got {mask_url(url)}"
                ]
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "tag-watchdog",
            },
        )
    raise errors.ConfigError(
        [f"database_url: unsupported database {backend!r} (use sqlite or postgresql+psycopg)"]
    )


def _sqlite_create_private(
    dialect: Any, conn_rec: Any, cargs: Sequence[Any], cparams: dict[str, Any]
) -> None:
    # The database holds every tag's history and the archived manifests: create it 0600 (SQLite
    # would create it 0644 under the usual umask, and gives its -wal and -shm files the mode of
    # the database file). A file that exists keeps its mode; a missing directory is SQLite's to
    # report.
    database = cparams.get("database", cargs[0] if cargs else None)
    if not isinstance(database, str) or database == ":memory:" or database.startswith("file:"):
        return
    with contextlib.suppress(OSError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Hand transaction control to SQLAlchemy (see _sqlite_on_begin): the sqlite3 module's legacy
    # mode would neither BEGIN before SELECT nor before DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets the CLI read while the daemon writes; NORMAL is durable enough under WAL.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock up front where asked (``writing``, migrations). SQLite never
    # waits when a transaction that has read must become a writer (its snapshot may be stale: it
    # answers SQLITE_BUSY at once, whatever busy_timeout says); one that asks for the lock before
    # reading waits for it for up to busy_timeout.
    immediate = conn.get_execution_options().get("watchdog_sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def missing_sqlite_file(engine: Engine) -> str | None:
    """The absolute path of ``engine``'s SQLite file when it does not exist (connecting would
    create it), else None (it exists, it is in memory, or the database is not SQLite)."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    path = os.path.abspath(database)
    return None if os.path.exists(path) else path


def mask_url(url: str | sa.URL) -> str:
    """``url`` with every password (userinfo or query string) replaced by ``***``, for messages
    and logs: ``config.mask_url``, the one masking of a database URL, also for an engine's URL."""
    if isinstance(url, sa.URL):
        url = url.render_as_string(hide_password=False)
    return config.mask_url(url)


def _passwords(url: sa.URL) -> list[str]:
    """Every password ``url`` holds: its userinfo's and its query string's (``?password=``)."""
    found = [str(url.password)] if url.password else []
    for key, value in url.query.items():
        if key.strip().lower() in config.SECRET_QUERY_KEYS:
            found += [value] if isinstance(value, str) else list(value)
    return [p for p in found if p]


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[sa.Connection]:
    """A connection in a write transaction, committed when the body returns, rolled back when it
    raises; SQLAlchemy errors come out as ``errors.StoreError`` (see ``translate``).

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``: when another process holds the
    write lock (an operator's ``sqlite3`` shell, a backup, a CLI command), the write waits for it
    for up to ``SQLITE_BUSY_TIMEOUT_MS`` and then goes ahead; past that it raises
    ``errors.DatabaseUnavailable`` ("database is locked") having written nothing. A plain
    ``BEGIN`` would fail at once in any transaction that reads before it writes.
    """
    with translating(engine), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn = conn.execution_options(watchdog_sqlite_immediate=True)
        with conn.begin():
            yield conn


def advisory_key(text: str) -> int:
    """A PostgreSQL advisory lock key (the int4 of the two-int form) for ``text``: its
    sha256's first four bytes. Each user pairs it with a namespace of its own."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big", signed=True)


# --- error translation ---------------------------------------------------------------------------


@contextlib.contextmanager
def translating(engine: Engine) -> Iterator[None]:
    """Run the body with SQLAlchemy errors turned into ``errors.StoreError`` (see ``translate``)."""
    try:
        yield
    except exc.SQLAlchemyError as e:
        raise translate(e, engine.url) from e


def translate(error: exc.SQLAlchemyError, url: sa.URL) -> errors.StoreError:
    """The ``errors.StoreError`` that ``error`` means, with a one-line, password-free message.

    Connection trouble (refused, DNS, authentication, server shutting down, pool exhausted, SQLite
    locked or unopenable) is ``DatabaseUnavailable``; a missing table or column is
    ``SchemaMismatch``; anything else is a plain, permanent ``StoreError``.
    """
    shown = mask_url(url)
    reason = _reason(error, url)
    if _is_schema_problem(error):
        return errors.SchemaMismatch(
            f"database {shown} does not have the expected schema ({reason}): {UPGRADE_HINT}"
        )
    if _is_unavailable(error):
        return errors.DatabaseUnavailable(f"database {shown} unreachable: {reason}")
    return errors.StoreError(f"database {shown}: {reason}")


def _sqlstate(error: exc.SQLAlchemyError) -> str:
    orig = getattr(error, "orig", None)
    return str(getattr(orig, "sqlstate", None) or "")


def _is_schema_problem(error: exc.SQLAlchemyError) -> bool:
    if _sqlstate(error) in _PG_SCHEMA_STATES:
        return True
    text = str(getattr(error, "orig", "") or "")
    return isinstance(error, exc.OperationalError) and (
        "no such table" in text or "no such column" in text
    )


def _is_unavailable(error: exc.SQLAlchemyError) -> bool:
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, exc.TimeoutError | exc.DisconnectionError | exc.InterfaceError):
        return True
    state = _sqlstate(error)
    if state:
        return state[:2] in _PG_UNAVAILABLE_CLASSES
    # psycopg connection failures carry no SQLSTATE; SQLite reports locks and unopenable files as
    # OperationalError too.
    return isinstance(error, exc.OperationalError)


_REASONS = (
    ("connection refused", "connection refused"),
    ("could not translate host name", "unknown host"),
    ("name or service not known", "unknown host"),
    ("temporary failure in name resolution", "unknown host"),
    ("password authentication failed", "password authentication failed"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("does not exist", None),  # "database x does not exist": the driver's words are clear enough
    ("database is locked", "database is locked (another process holds the write lock)"),
    ("unable to open database file", "unable to open the database file"),
    ("server closed the connection", "the server closed the connection"),
    ("terminating connection", "the server terminated the connection"),
)


def _reason(error: exc.SQLAlchemyError, url: sa.URL) -> str:
    orig = getattr(error, "orig", None)
    raw = str(orig) if orig is not None else str(error)
    if isinstance(error, exc.TimeoutError):
        raw = "connection pool exhausted (timed out waiting for a connection)"
    lowered = raw.lower()
    first = next((line.strip() for line in raw.splitlines() if line.strip()), type(error).__name__)
    # psycopg prefixes "connection failed: connection to server at ..., port N failed: <why>"
    first = re.sub(r"^.*connection to server (at|on) .*? failed: ", "", first)
    reason = first
    for needle, short in _REASONS:
        if needle in lowered:
            reason = short or first
            break
    for password in _passwords(url):
        reason = reason.replace(password, "***")
    return errors.truncate(reason)


# --- schema --------------------------------------------------------------------------------------


def script_location() -> str:
    """The directory of the ``watchdog.migrations`` package (checkout or installed wheel)."""
    # Imported by name: the package lives in the top-level migrations/ directory (setuptools
    # package-dir), which static checkers cannot map to watchdog.migrations.
    package = importlib.import_module("watchdog.migrations")
    if package.__file__ is None:
        raise errors.StoreError("cannot locate the watchdog.migrations package")
    return os.path.dirname(os.path.abspath(package.__file__))


def _alembic_config(connection: sa.Connection | None = None) -> Any:
    # Alembic is imported only to migrate: checking the schema (every command, every start)
    # reads the revision table and the scripts' headers itself, ~0.2 s of imports saved.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_HEADER_RE = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.MULTILINE)


def known_revisions() -> dict[str, tuple[str, ...]]:
    """Every revision of this release's migration scripts, with the revisions it follows, read
    from the scripts' ``revision``/``down_revision`` lines (Alembic reads the same lines)."""
    return _read_revisions(script_location())


@functools.cache
def _read_revisions(location: str) -> dict[str, tuple[str, ...]]:
    found: dict[str, tuple[str, ...]] = {}
    versions = os.path.join(location, "versions")
    for name in sorted(os.listdir(versions)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(versions, name), encoding="utf-8") as f:
            header = dict(_HEADER_RE.findall(f.read()))
        if "revision" not in header:
            continue
        revision = ast.literal_eval(header["revision"])
        down = ast.literal_eval(header.get("down_revision", "None"))
        found[str(revision)] = (
            tuple(down)
            if isinstance(down, tuple | list)
            else ((str(down),) if down is not None else ())
        )
    return found


def head() -> str:
    """The newest revision this release of tag-watchdog knows."""
    revisions = known_revisions()
    followed = {down for downs in revisions.values() for down in downs}
    heads = [r for r in revisions if r not in followed]
    if len(heads) != 1:
        raise errors.StoreError(f"migration scripts have {len(heads)} heads, expected one")
    return heads[0]


def _revisions(conn: sa.Connection, table_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The revisions recorded in the database's ``alembic_version`` table (none: empty)."""
    names = table_names if table_names is not None else sa.inspect(conn).get_table_names()
    if _VERSION_TABLE not in names:
        return ()
    rows = conn.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars()  # noqa: S608
    return tuple(str(r) for r in rows)


def current(engine: Engine) -> str | None:
    """The revision the database is at, or None when it has none (empty)."""
    with translating(engine), engine.connect() as conn:
        revisions = _revisions(conn)
    return ",".join(revisions) if revisions else None


def schema_status(engine: Engine) -> SchemaStatus:
    """Compare the database's Alembic revision with this release's migration head.

    ``empty``: no revision and none of the application's tables (a fresh database).
    ``current``: at the head. ``outdated``: at an older revision of ours, or application tables
    without any revision (stamped to base). ``newer``: a revision these scripts do not know.
    """
    with translating(engine), engine.connect() as conn:
        return _status(conn)


def _status(conn: sa.Connection) -> SchemaStatus:
    names = sa.inspect(conn).get_table_names()
    revisions = _revisions(conn, names)
    has_tables = bool(set(names) & set(tables.APPLICATION_TABLES))
    return _classify(revisions, has_tables)


def _classify(revisions: tuple[str, ...], has_tables: bool) -> SchemaStatus:
    if not revisions:
        return "outdated" if has_tables else "empty"
    if revisions == (head(),):
        return "current"
    known = known_revisions()
    if any(revision not in known for revision in revisions):
        return "newer"
    return "outdated"


def upgrade(engine_or_url: Engine | str) -> None:
    """Migrate the database to this release's head, in one transaction where the backend can.

    Takes an engine, or a URL (an engine is then made with ``create_engine`` and disposed after).
    Safe to run concurrently: on PostgreSQL an advisory lock serialises migrators (the second finds
    the work done); on SQLite the write lock is taken up front. Raises ``errors.SchemaMismatch``,
    changing nothing, for a database migrated by a newer release or one with tables but no
    recorded revision.
    """
    if isinstance(engine_or_url, str):
        engine = create_engine(engine_or_url)
        try:
            _upgrade(engine)
        finally:
            engine.dispose()
    else:
        _upgrade(engine_or_url)


def _upgrade(engine: Engine) -> None:
    shown = mask_url(engine.url)
    with translating(engine), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn = conn.execution_options(watchdog_sqlite_immediate=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            status = _status(conn)
            if status == "current":
                return
            found = _revisions(conn)
            if status == "newer" or (status == "outdated" and not found):
                raise _mismatch(status, shown, ",".join(found) or None)
            from alembic import command
            from alembic.util import exc as alembic_exc

            try:
                command.upgrade(_alembic_config(conn), "head")
            except alembic_exc.CommandError as e:
                raise errors.SchemaMismatch(
                    f"database {shown}: cannot migrate: {errors.truncate(str(e))}"
                ) from e


def ensure_schema(engine: Engine, *, migrate_empty: bool) -> None:
    """Return when the database is at this release's schema; migrate it first if it is empty and
    ``migrate_empty`` allows. Otherwise raise ``errors.SchemaMismatch`` saying what to do.

    Raises ``errors.DatabaseUnavailable`` when the database cannot be reached.
    """
    status = schema_status(engine)
    shown = mask_url(engine.url)
    if status == "current":
        return
    if status == "empty":
        if not migrate_empty:
            raise errors.SchemaMismatch(
                f"database {shown} has no tag-watchdog schema yet: {UPGRADE_HINT}"
            )
        _upgrade(engine)
        return
    raise _mismatch(status, shown, current(engine))


def _mismatch(status: SchemaStatus, shown: str, found: str | None) -> errors.SchemaMismatch:
    if found is None:
        # Tables without a revision (someone ran `alembic stamp base`): upgrading would try to
        # create tables that exist, so do not suggest it.
        return errors.SchemaMismatch(
            f"database {shown} has tag-watchdog tables but no recorded schema revision: restore "
            "its alembic_version row or point tag-watchdog at another database"
        )
    if status == "newer":
        return errors.SchemaMismatch(
            f"database {shown} was migrated by a newer tag-watchdog (schema revision {found}; "
            f"this release knows up to {head()}): upgrade tag-watchdog or point it at another "
            "database"
        )
    return errors.SchemaMismatch(
        f"database {shown} is at schema revision {found}, this tag-watchdog needs {head()}: "
        f"{UPGRADE_HINT}"
    )
