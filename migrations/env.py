"""Alembic environment for tag-watchdog.

``watchdog.store.db`` runs Alembic programmatically and hands over its open connection in
``config.attributes["connection"]`` so that the migration runs in the caller's transaction (and,
on PostgreSQL, under the caller's advisory lock). Plain ``alembic`` invocations fall back to
``-x url=...``, then to ``sqlalchemy.url`` (see alembic.ini). Logging is left as the application
configured it: no fileConfig here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from watchdog.store import tables

config = context.config
target_metadata = tables.metadata


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def _url() -> str | None:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    if not url:
        raise RuntimeError("no connection given, and neither -x url=... nor sqlalchemy.url is set")
    # Imported here: the store's engine factory sets the SQLite pragmas the application relies on.
    from watchdog.store import db

    engine = db.create_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
