"""The ``tag-watchdog`` command line: the only place (with the daemon's top level) where errors
become text for a person.

Exit codes: 0 all good; 1 drift found (scan); 2 usage or configuration error; 3 could not
complete (registry, auth or database unreachable). Heavy modules are imported lazily so that
``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from watchdog import __version__, errors

if TYPE_CHECKING:
    from watchdog import actions, config
    from watchdog.registry import client as registry_client
    from watchdog.store import repo as store_repo

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
SCAN_ALERT_SECONDS = 20.0  # how long `scan` keeps retrying the alerts it queued before exiting


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="YAML config file (default: $WATCHDOG_CONFIG)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log level (default: info for run, warning otherwise)",
    )
    common.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=["text", "json"],
        help="log lines as key=value text or JSON (default: text)",
    )
    parser = _Parser(
        prog="tag-watchdog",
        description="Watches container registries for release tags that move or disappear.",
        parents=[common],
        epilog="Exit codes: 0 good, 1 drift found, 2 usage/config error, 3 could not complete.",
    )
    parser.add_argument("--version", action="version", version=f"tag-watchdog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("run", parents=[common], help="run the daemon: scheduler + HTTP server")
    p = sub.add_parser("scan", parents=[common], help="check every watch once, then exit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("status", parents=[common], help="every recorded tag and its state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--repository", help="only this repository (e.g. ghcr.io/deephaven/server)")
    p = sub.add_parser("history", parents=[common], help="the events of one tag")
    p.add_argument(
        "ref", metavar="REF", help="image reference, e.g. ghcr.io/deephaven/server:0.15.0"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    _add_release_commands(sub, common)
    _add_tls_flags(sub.choices["guard"])

    db = sub.add_parser("db", parents=[common], help="database schema (Alembic)")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_sub.required = True
    db_sub.add_parser("upgrade", parents=[common], help="migrate the database to this release")
    db_sub.add_parser("current", parents=[common], help="show the schema revision")

    cfg = sub.add_parser("config", parents=[common], help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    cfg_sub.required = True
    p = cfg_sub.add_parser("check", parents=[common], help="validate, print with secrets masked")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    al = sub.add_parser("alerts", parents=[common], help="alert channels (Slack)")
    al_sub = al.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=_Parser)
    al_sub.required = True
    al_sub.add_parser(
        "test", parents=[common], help="send a test alert through every configured channel"
    )
    return parser


def _add_release_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    ref_help = "image reference with a tag, e.g. ghcr.io/deephaven/server:0.15.0"
    p = sub.add_parser(
        "restore", parents=[common], help="put the recorded (or a given, recorded) digest back"
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("--digest", help="restore this digest (one the tag once had as its record)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "accept", parents=[common], help="make the tag's current digest the record (re-release)"
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("--reason", help="why (kept in the event log)")
    p = sub.add_parser(
        "guard",
        parents=[common],
        help="release guard for CI: exit 1 if the tag already exists, 3 when unsure",
        epilog="Exit codes: 0 the tag does not exist (or is the allowed digest), 1 it exists, "
        "2 usage error, 3 the registry could not be asked or refused access.",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument(
        "--allow-digest", metavar="D", help="exit 0 when the tag already is this digest (a re-run)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tag-watchdog`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a reader gone (`| head`) is a BrokenPipeError here
        return code
    except BrokenPipeError:
        # `tag-watchdog status | head`: the reader left; nothing went wrong. (Before the handler
        # of Exception, which would call it a bug.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except errors.WatchdogError as exc:
        print(f"tag-watchdog: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tag-watchdog: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug, not an expected failure: one line for the user, the traceback on request.
        import logging

        logging.getLogger("watchdog.cli").debug("internal error", exc_info=True)
        print(
            f"tag-watchdog: internal error: {type(exc).__name__}: {errors.truncate(str(exc))} "
            "(this is a bug; --log-level debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def _setup_logging(args: argparse.Namespace) -> None:
    from watchdog import logs

    default = "info" if args.command == "run" else "warning"
    logs.setup(getattr(args, "log_level", default), getattr(args, "log_format", "text"))


def _config_path(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None) or os.environ.get("WATCHDOG_CONFIG") or None


def _load(args: argparse.Namespace, *, need_watches: bool = False) -> config.Settings:
    """The settings; with ``need_watches`` (``run``, ``scan`` and ``config check``) a file with at
    least one watch is required, its absence reported with the file's other problems."""
    from watchdog import config

    path = _config_path(args)
    if path is None and need_watches:
        raise errors.UsageError(
            "no configuration: pass -c CONFIG or set WATCHDOG_CONFIG (see config.example.yaml)"
        )
    return _with_tls_flags(args, config.load(path, require_watches=need_watches))


def _open_store(settings: config.Settings, *, reading: bool = False) -> store_repo.Store:
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
        engine, channels=outbox.channel_names(settings), vaulted=settings.vaulted()
    )


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        from watchdog import daemon

        return daemon.main(_load(args, need_watches=True))
    if command == "scan":
        return _scan(args)
    if command == "status":
        return _status(args)
    if command == "history":
        return _history(args)
    if command == "restore":
        return _restore(args)
    if command == "accept":
        return _accept(args)
    if command == "guard":
        return _guard(args)
    if command == "db":
        return _db(args)
    if command == "config":
        return _config_check(args)
    if command == "alerts":
        return _alerts_test(args)
    raise errors.UsageError(f"unknown command {command!r}")  # argparse prevents this


# --- scan ----------------------------------------------------------------------------------------


def _scan(args: argparse.Namespace) -> int:
    settings = _load(args, need_watches=True)
    store = _open_store(settings)

    import asyncio
    import tempfile

    from watchdog import metrics, service, vaulting, views
    from watchdog.alerts import outbox

    undelivered = unvaulted = 0
    drift = failed = False
    shown = 0
    # --json: each watch's JSON goes to a temporary file as soon as it is ready, and the document
    # is written when the scan is over, in the shape it always had ("exit_code" first, known only
    # at the end): memory does not grow with the fleet, and stdout gets one whole document or,
    # when the scan is cut short (an internal error, Ctrl-C), nothing.
    spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed below)

    def show(r: service.CheckResult) -> None:
        # Each result is printed (or spooled) in config order as soon as it and those before it
        # are done, and then dropped: memory stays at a few repositories' working sets.
        nonlocal drift, failed, shown
        drift = drift or bool(r.drifted)
        failed = failed or not r.ok
        if args.json:
            spool.write(",\n" if shown else "\n")
            json.dump(views.check_json(r), spool, indent=2)
        else:
            print("\n".join(views.check_lines(r)))
        shown += 1

    async def scan_all() -> None:
        nonlocal undelivered, unvaulted
        clients = service.Clients(settings)
        checker = service.Checker(settings, store, clients, metrics.Metrics())
        try:
            await service.check_all(checker, settings.watches, show)
            # Copies of what this scan found go to the vault before it exits (bounded), so
            # one-shot use (cron, CI) is protected too; before the alerts: a failure is one.
            try:
                unvaulted = await vaulting.complete(
                    settings, store.vault, clients.get, notices=store.outbox
                )
            except errors.StoreError as exc:
                print(f"tag-watchdog: vault copies not made: {exc}", file=sys.stderr)
        finally:
            await clients.aclose()
        # Deliver what this scan queued (and anything left over), for a bounded time.
        worker = outbox.Worker(store.outbox, outbox.senders(settings), settings)
        try:
            undelivered = await worker.drain(SCAN_ALERT_SECONDS)
        except errors.StoreError as exc:
            print(f"tag-watchdog: alerts not delivered: {exc}", file=sys.stderr)

    try:
        asyncio.run(scan_all())
        if unvaulted:
            print(
                f"tag-watchdog: {unvaulted} vault copy(ies) not done yet (see the log); "
                "they stay queued for `tag-watchdog run` or the next scan",
                file=sys.stderr,
            )
        if undelivered:
            print(
                f"tag-watchdog: {undelivered} alert(s) not delivered yet (see the log); "
                "they stay queued for `tag-watchdog run` or the next scan",
                file=sys.stderr,
            )
        # Drift found is a definite answer even when some other watch failed; say both.
        code = EXIT_DRIFT if drift else (EXIT_FAILED if failed else EXIT_OK)
        if args.json:
            views.write_scan_json(sys.stdout, code, drift=drift, complete=not failed, watches=spool)
            return code
    finally:
        spool.close()
    if failed:
        print("tag-watchdog: some checks could not complete (see above)", file=sys.stderr)
    return code


# --- status / history ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from watchdog import models, vaulting, views

    settings = _load(args)
    store = _open_store(settings, reading=True)
    repository = None
    if args.repository:
        repository = models.ImageRef.parse(args.repository, allow_tag=False).name
    tags = store.all_tags(repository)
    copies = store.vault.copies(repository)
    if args.json:
        _print_json(
            [
                views.record_json(t) | {"vault": vaulting.state_json(vaulting.copy_of(copies, t))}
                for t in tags
            ]
        )
        return EXIT_OK
    if not tags and repository is not None and store.all_tags():
        print(
            f"no tags of {repository} recorded (other repositories have some: `status` lists all)"
        )
        return EXIT_OK
    if not tags:
        print("no tags recorded yet (run `tag-watchdog scan` or `tag-watchdog run`)")
        return EXIT_OK
    vault_column = settings.vault is not None or bool(copies)
    rows = [
        (
            t.ref,
            t.state.value,
            models.short_digest(t.recorded_digest),
            models.short_digest(t.current_digest) if t.current_digest else "-",
            _when(t.last_checked),
        )
        + ((vaulting.state_text(vaulting.copy_of(copies, t)),) if vault_column else ())
        for t in tags
    ]
    headers = ("TAG", "STATE", "RECORDED", "CURRENT", "LAST CHECKED")
    _print_table(headers + (("VAULT",) if vault_column else ()), rows)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from watchdog import models, views

    ref = models.ImageRef.parse(args.ref, require_tag=True)
    settings = _load(args)
    store = _open_store(settings, reading=True)
    assert ref.tag is not None
    events = store.history(ref.name, ref.tag)
    if args.json:
        _print_json([views.event_json(e) for e in events])
        return EXIT_OK
    if not events:
        print(f"no events recorded for {ref.name}:{ref.tag}")
        return EXIT_OK
    rows = []
    for e in events:
        platforms = e.detail.get("changed_platforms") or []
        rows.append(
            (
                _when(e.at),
                e.kind.value,
                e.old_digest or "-",
                e.new_digest or "-",
                ", ".join(platforms) if platforms else "",
                views.event_by(e),
            )
        )
    _print_table(("WHEN", "EVENT", "OLD DIGEST", "NEW DIGEST", "PLATFORMS", "BY"), rows)
    return EXIT_OK


# --- restore / accept / guard ---------------------------------------------------------------------


def _actions(
    store: store_repo.Store, client: registry_client.RegistryClient | None = None
) -> actions.Actions:
    """Restores and accepts from the command line: each holds its repository's claim, so that no
    daemon's check of it runs meanwhile (PostgreSQL), waiting for one under way a while."""
    from watchdog import actions
    from watchdog.store import claims

    hold = actions.claims_hold(claims.Claims(store.engine))
    return actions.Actions(store, hold, registries=None if client is None else lambda _: client)


def _restore(args: argparse.Namespace) -> int:
    import asyncio

    from watchdog import actions, models, restore, views
    from watchdog.registry import client as registry_client

    ref = models.ImageRef.parse(args.ref, require_tag=True)
    digest = models.check_digest(args.digest) if args.digest else None
    settings = _load(args)
    store = _open_store(settings)

    async def go() -> restore.Plan | restore.Outcome:
        async with registry_client.RegistryClient(settings.registry(ref.host)) as rc:
            acts = _actions(store, rc)
            if args.dry_run:
                return await acts.plan(ref, digest, actions.cli_actor())
            return await acts.restore(ref, digest, actions.cli_actor())

    result = asyncio.run(go())
    if isinstance(result, restore.Plan):
        code = EXIT_OK if result.ok else EXIT_FAILED
        if args.json:
            _print_json({"exit_code": code, "dry_run": True, **views.plan_json(result)})
        else:
            print("\n".join(result.describe()))
        return code
    code = EXIT_OK if result.restored else EXIT_FAILED
    if args.json:
        _print_json({"exit_code": code, "event": views.event_json(result.event)})
    elif result.restored:
        print(f"restored {ref.name}:{ref.tag} to {result.event.new_digest}")
    else:
        print(
            f"tag-watchdog: restore of {ref.name}:{ref.tag} failed: {result.reason}",
            file=sys.stderr,
        )
    return code


def _accept(args: argparse.Namespace) -> int:
    import asyncio

    from watchdog import actions, models

    ref = models.ImageRef.parse(args.ref, require_tag=True)
    settings = _load(args)
    store = _open_store(settings)
    event = asyncio.run(_actions(store).accept(ref, args.reason, actions.cli_actor()))
    print(
        f"accepted {event.repository}:{event.tag}: {event.new_digest} is the recorded digest now "
        f"(was {event.old_digest})"
    )
    return EXIT_OK


def _guard(args: argparse.Namespace) -> int:
    """Fails closed: 0 only on a definitive "no such tag" or the allowed digest."""
    import asyncio

    from watchdog import models
    from watchdog.registry import client as registry_client
    from watchdog.registry import resolve

    ref = models.ImageRef.parse(args.ref, require_tag=True)
    allowed = models.check_digest(args.allow_digest) if args.allow_digest else None
    assert ref.tag is not None
    settings = _load(args)

    async def ask() -> str | None:
        async with registry_client.RegistryClient(settings.registry(ref.host)) as rc:
            try:
                resolved = await resolve.resolve_digest(rc, ref.repository, ref.tag or "")
            except errors.NotFound:
                return None  # definitive: the HEAD's 404 carried a registry error code
            return resolved.digest

    digest = asyncio.run(ask())
    shown = f"{ref.name}:{ref.tag}"
    first_seen = _first_recorded(args, settings, ref) if digest is not None else None
    if digest is None:
        code, text = EXIT_OK, f"{shown} does not exist: go ahead"
    elif allowed is not None and digest == allowed:
        code, text = EXIT_OK, f"{shown} already is {digest} (allowed: a re-run)"
    else:
        code = EXIT_DRIFT
        text = f"{shown} is already released: {digest}"
        if first_seen:
            text += f" (first recorded {first_seen})"
        text += "; refusing to overwrite a release"
    if args.json:
        _print_json(
            {
                "exit_code": code,
                "ref": shown,
                "exists": digest is not None,
                "digest": digest,
                "allowed": code == EXIT_OK and digest is not None,
                "first_recorded": first_seen,
            }
        )
    else:
        print(text)
    return code


def _first_recorded(args: argparse.Namespace, settings: config.Settings, ref: Any) -> str | None:
    """When the tag was first recorded, from the DB of a given config; None without one (or when
    the DB cannot say: the guard's answer comes from the registry alone)."""
    if _config_path(args) is None:
        return None
    from watchdog.store import db
    from watchdog.store import repo as store_repo

    try:
        record = store_repo.Store(db.create_engine(settings.database_url.reveal())).get_tag(
            ref.name, ref.tag
        )
    except errors.StoreError as exc:
        print(f"tag-watchdog: note: the database cannot say: {exc}", file=sys.stderr)
        return None
    return _when(record.first_seen) if record is not None else None


# --- db / config ---------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> int:
    from watchdog import config
    from watchdog.store import db

    settings = _load(args)
    url = settings.database_url.reveal()
    engine = db.create_engine(url)
    if args.db_command == "upgrade":
        before = db.current(engine)
        db.upgrade(engine)
        after = db.current(engine)
        shown = config.mask_url(url)
        if before == after:
            print(f"{shown}: already at revision {after}")
        else:
            print(f"{shown}: upgraded {before or '(empty)'} -> {after}")
        return EXIT_OK
    print(db.current(engine) or "(empty: run `tag-watchdog db upgrade`)")
    return EXIT_OK


def _config_check(args: argparse.Namespace) -> int:
    """Exactly the validation of ``scan`` and ``run``; prints a config file that loads back
    (secrets as the ``${VAR}`` they came from, or ``***``: docs/CONFIG.md)."""
    from watchdog import config

    settings = _load(args, need_watches=True)
    if args.json:
        _print_json(config.masked(settings))
    else:
        print(config.to_yaml(settings))
    return EXIT_OK


# --- alerts --------------------------------------------------------------------------------------


def _alerts_test(args: argparse.Namespace) -> int:
    import asyncio

    from watchdog.alerts import outbox

    settings = _load(args)
    results = asyncio.run(outbox.send_test(settings))
    if not results:
        print(
            "tag-watchdog: no alert channel configured "
            "(set slack.webhook_url, or slack.token and slack.channel)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for channel, error in sorted(results.items()):
        print(f"{channel}: {'sent' if error is None else 'FAILED: ' + error}")
    return EXIT_FAILED if any(e is not None for e in results.values()) else EXIT_OK


# --- output helpers ------------------------------------------------------------------------------


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# --- guard's TLS flags (named as oras, helm and crane users know them) ----------------------------

# flag -> the registries: key it sets, for every registry the command asks (over its entry)
_TLS_FLAGS = {"ca_file": "--ca-file", "client_cert": "--client-cert", "client_key": "--client-key"}


def _add_tls_flags(p: argparse.ArgumentParser) -> None:
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


def _with_tls_flags(args: argparse.Namespace, settings: config.Settings) -> config.Settings:
    flags = {key: getattr(args, key, None) for key in _TLS_FLAGS}
    flags["insecure"] = getattr(args, "plain_http", None)
    return settings.with_registry_flags(flags, {**_TLS_FLAGS, "insecure": "--tls/--plain-http"})


if __name__ == "__main__":
    sys.exit(main())
