"""What the CLI's commands share: loading the config and the store, and how they print.

``cli`` (the parser, the dispatch and the one place errors become text) and the command modules
under it (``cli_guard``, ``cli_incidents``) import this; it imports none of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from watchdog import errors

if TYPE_CHECKING:
    from watchdog import config
    from watchdog.store import repo as store_repo


def say(text: str, event: str = "error") -> None:
    """A line for the person on stderr (as JSON with ``--log-format json``: logs.say)."""
    from watchdog import logs

    logs.say(text, event=event)


def config_path(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None) or os.environ.get("WATCHDOG_CONFIG") or None


def load(args: argparse.Namespace, *, need_watches: bool = False) -> config.Settings:
    """The settings; with ``need_watches`` (``run``, ``scan`` and ``config check``) a file with at
    least one watch is required, its absence reported with the file's other problems."""
    from watchdog import config

    path = config_path(args)
    if path is None and need_watches:
        raise errors.UsageError(
            "no configuration: pass -c CONFIG or set WATCHDOG_CONFIG (see config.example.yaml)"
        )
    return with_tls_flags(args, config.load(path, require_watches=need_watches))


def open_store(settings: config.Settings, *, reading: bool = False) -> store_repo.Store:
    """The store, its schema created first when the database is empty (never silently upgraded).
    ``reading`` (status, history): a missing SQLite file is an error, not a new empty database
    ("no tags recorded yet" would read like lost data when only ``-c`` was forgotten)."""
    from watchdog.alerts import outbox
    from watchdog.store import db
    from watchdog.store import repo as store_repo

    engine = db.create_engine(settings.database_url.reveal())
    if reading and (missing := db.missing_sqlite_file(engine)) is not None:
        engine.dispose()
        raise errors.UsageError(
            f"no database at {missing}: nothing was recorded there. Pass -c CONFIG (or set "
            "WATCHDOG_CONFIG) with the database_url the daemon or scan uses"
        )
    db.ensure_schema(engine, migrate_empty=True)
    # Events written by any command queue their alerts in the same transaction.
    return store_repo.Store(
        engine,
        channels=outbox.channel_names(settings),
        vaulted=settings.vaulted(),
        grouping=settings.incidents.grouping(),
    )


# --- output helpers ------------------------------------------------------------------------------


def when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from watchdog import views

    for line in views.table_lines(header, rows):  # reasons, actors: from outside (escaped)
        print(line)


# --- guard's TLS flags (named as oras, helm and crane users know them) ----------------------------

# flag -> the registries: key it sets, for every registry the command asks (over its entry)
TLS_FLAGS = {"ca_file": "--ca-file", "client_cert": "--client-cert", "client_key": "--client-key"}


def add_tls_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "TLS",
        "Like the config's ca_file, client_cert, client_key and insecure. Docker's "
        "certs.d/<host[:port]>/ (ca.crt, client.cert, client.key) is read too: from "
        "/etc/docker/certs.d, or $WATCHDOG_CERTS_DIR.",
    )
    g.add_argument("--ca-file", metavar="PEM", help="trust these CAs too (added to the default)")
    g.add_argument("--client-cert", metavar="PEM", help="client certificate (mTLS)")
    g.add_argument("--client-key", metavar="PEM", help="the client certificate's private key")
    mode = g.add_mutually_exclusive_group()
    on_loopback = "HTTPS even on loopback (plain HTTP by default; --ca-file implies it)"
    mode.add_argument(
        "--tls", dest="plain_http", action="store_false", default=None, help=on_loopback
    )
    mode.add_argument("--plain-http", action="store_true", default=None, help="plain HTTP")


def with_tls_flags(args: argparse.Namespace, settings: config.Settings) -> config.Settings:
    flags = {key: getattr(args, key, None) for key in TLS_FLAGS}
    flags["insecure"] = getattr(args, "plain_http", None)
    return settings.with_registry_flags(flags, {**TLS_FLAGS, "insecure": "--tls/--plain-http"})
