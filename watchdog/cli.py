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

from watchdog import __version__, cli_common, errors, terminal

if TYPE_CHECKING:
    from watchdog import actions
    from watchdog.store import repo as store_repo

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
SCAN_ALERT_SECONDS = 20.0  # how long `scan` keeps retrying the alerts it queued before exiting


class _Parser(argparse.ArgumentParser):
    json_errors = False  # --log-format json on the command line: a usage error is JSON too
    last_error: str | None = None  # the usage error, for `guard --json`'s document

    def error(self, message: str) -> NoReturn:
        _Parser.last_error = message
        if self.json_errors:
            from watchdog import logs

            logs.setup("warning", "json")
            logs.say(f"{self.prog}: error: {message}", event="usage_error")
            self.exit(EXIT_USAGE)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _wants_json_logs(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for ``--log-format json`` (looked at before parsing, for the errors
    of parsing itself)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (
            arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]
        ):
            return True
    return False


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
    from watchdog import cli_incidents

    cli_incidents.add_parser(sub, common)

    _add_release_commands(sub, common)
    cli_common.add_tls_flags(sub.choices["guard"])

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

    sub.add_parser(
        "health",
        parents=[common],
        help="the container health probe: 0 when the daemon's /healthz (at http.listen) answers",
    )

    al = sub.add_parser("alerts", parents=[common], help="alert channels (Slack)")
    al_sub = al.add_subparsers(dest="alerts_command", metavar="ACTION", parser_class=_Parser)
    al_sub.required = True
    al_sub.add_parser(
        "test", parents=[common], help="send a test alert through every configured channel"
    )
    return parser


def _add_release_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    ref_help = "image reference with a tag, e.g. ghcr.io/deephaven/server:0.15.0"
    several = (
        "Several REFs: all are checked before anything changes (one bad REF: exit 2, nothing "
        "changed), then each is done in turn; the exit code is the worst outcome."
    )
    p = sub.add_parser(
        "restore",
        parents=[common],
        help="put the recorded (or a given, recorded) digest back",
        epilog=f"{several} --drifted: every drifted or deleted tag, all plans shown first; "
        "--incident ID: every tag of the incident still drifted, deleted or broken, the same way.",
    )
    p.add_argument("refs", metavar="REF", nargs="*", help=ref_help)
    p.add_argument("--drifted", action="store_true", help="every drifted or deleted tag")
    p.add_argument("--incident", metavar="ID", type=int, help="the tags of this incident")
    p.add_argument("--repository", help="with --drifted: only this repository's tags")
    p.add_argument("--digest", help="restore this digest (once the tag's record; one REF)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    accept_help = "make the tag's current digest the record (re-release)"
    p = sub.add_parser("accept", parents=[common], help=accept_help, epilog=several)
    p.add_argument("refs", metavar="REF", nargs="+", help=ref_help)
    p.add_argument("--reason", help="why (kept in the event log)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "guard",
        parents=[common],
        help="release guard for CI: exit 1 if the tag already exists, 3 when unsure",
        epilog="Exit codes: 0 the tag does not exist (or is the allowed digest), 1 it exists, "
        "2 usage error, 3 the registry could not be asked or refused access.",
    )
    p.add_argument("ref", metavar="REF", nargs="+", help=ref_help + " (several: the worst answer)")
    p.add_argument(
        "--allow-digest", metavar="D", help="exit 0 when the tag already is this digest (a re-run)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tag-watchdog`` console script."""
    parser = build_parser()
    _Parser.json_errors = _wants_json_logs(sys.argv[1:] if argv is None else list(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        _guard_usage_json(sys.argv[1:] if argv is None else argv, exc.code)
        raise
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
        cli_common.say(f"tag-watchdog: {terminal.safe(str(exc))}", "error")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from watchdog import aiorun

        cli_common.say("tag-watchdog: interrupted", "interrupted")
        if isinstance(exc, aiorun.Interrupted) and exc.abandoned:
            # a thread still in a store call would hold up the interpreter's exit (it joins
            # them): nothing it does matters any more (aiorun says why), so do not wait for it
            aiorun.exit_now(130)
        return 130
    except Exception as exc:
        # A bug, not an expected failure: one line for the user, the traceback on request.
        import logging

        logging.getLogger("watchdog.cli").debug("internal error", exc_info=True)
        cli_common.say(
            f"tag-watchdog: internal error: {type(exc).__name__}: "
            f"{terminal.safe(errors.truncate(str(exc)))} "
            "(this is a bug; --log-level debug shows the traceback)",
            "internal_error",
        )
        return EXIT_FAILED


def _guard_usage_json(argv: Sequence[str], code: object) -> None:
    """``guard --json`` promises one JSON document in every outcome: a usage error too."""
    if code == EXIT_USAGE and "guard" in argv and "--json" in argv:
        cli_common.print_json({"exit_code": EXIT_USAGE, "error": _Parser.last_error, "results": []})


def _setup_logging(args: argparse.Namespace) -> None:
    from watchdog import logs

    default = "info" if args.command == "run" else "warning"
    logs.setup(getattr(args, "log_level", default), getattr(args, "log_format", "text"))


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "run":
        from watchdog import daemon

        return daemon.main(cli_common.load(args, need_watches=True))
    if command == "scan":
        return _scan(args)
    if command == "status":
        return _status(args)
    if command == "history":
        return _history(args)
    if command == "incidents":
        from watchdog import cli_incidents, models

        cli_incidents.check(args)
        return cli_incidents.run(
            args, cli_common.open_store(cli_common.load(args), reading=True), models.utcnow
        )
    if command == "restore":
        return _restore(args)
    if command == "accept":
        return _accept(args)
    if command == "guard":
        from watchdog import cli_guard

        return cli_guard.run(args)
    if command == "db":
        return _db(args)
    if command == "config":
        return _config_check(args)
    if command == "alerts":
        return _alerts_test(args)
    if command == "health":
        from watchdog import healthcheck

        # only an explicit -c: the daemon's own -c comes before WATCHDOG_CONFIG (healthcheck)
        return healthcheck.main(getattr(args, "config", None))
    raise errors.UsageError(f"unknown command {command!r}")  # argparse prevents this


# --- scan ----------------------------------------------------------------------------------------


def _scan(args: argparse.Namespace) -> int:
    settings = cli_common.load(args, need_watches=True)
    store = cli_common.open_store(settings)

    import asyncio
    import tempfile

    from watchdog import aiorun, metrics, models, service, vaulting, views
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
        drift = drift or views.confirmed_drift(r)
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
                cli_common.say(
                    f"tag-watchdog: vault copies not made: {terminal.safe(str(exc))}",
                    "vault_copies_not_made",
                )
        finally:
            await clients.aclose()
        # Deliver what this scan queued (and anything left over), for a bounded time. The scan
        # is over: every change of its incidents is known, their messages need not wait.
        worker = outbox.Worker(store.outbox, outbox.senders(settings), settings)
        try:
            await asyncio.to_thread(store.outbox.hurry_incidents, models.utcnow())
            undelivered = await worker.drain(SCAN_ALERT_SECONDS)
        except errors.StoreError as exc:
            cli_common.say(
                f"tag-watchdog: alerts not delivered: {terminal.safe(str(exc))}",
                "alerts_not_delivered",
            )

    try:
        aiorun.run(scan_all())
        if unvaulted:
            cli_common.say(
                f"tag-watchdog: {unvaulted} vault copy(ies) not done yet (see the log); "
                "they stay queued for `tag-watchdog run` or the next scan",
                "vault_copies_queued",
            )
        if undelivered:
            cli_common.say(
                f"tag-watchdog: {undelivered} alert(s) not delivered yet (see the log); "
                "they stay queued for `tag-watchdog run` or the next scan",
                "alerts_queued",
            )
        # Drift found is a definite answer even when some other watch failed; say both.
        code = EXIT_DRIFT if drift else (EXIT_FAILED if failed else EXIT_OK)
        if args.json:
            views.write_scan_json(sys.stdout, code, drift=drift, complete=not failed, watches=spool)
            return code
    finally:
        spool.close()
    if failed:
        cli_common.say(
            "tag-watchdog: some checks could not complete (see above)", "checks_incomplete"
        )
    return code


# --- status / history ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from watchdog import models, vaulting, views

    settings = cli_common.load(args)
    store = cli_common.open_store(settings, reading=True)
    repository = None
    if args.repository:
        repository = models.ImageRef.parse(args.repository, allow_tag=False).name
    tags = store.all_tags(repository)
    copies = store.vault.copies(repository)
    if args.json:
        cli_common.print_json(
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
            cli_common.when(t.last_checked),
        )
        + ((vaulting.state_text(vaulting.copy_of(copies, t)),) if vault_column else ())
        for t in tags
    ]
    headers = ("TAG", "STATE", "RECORDED", "CURRENT", "LAST CHECKED")
    cli_common.print_table(headers + (("VAULT",) if vault_column else ()), rows)
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from watchdog import models, views

    ref = models.ImageRef.parse(args.ref, require_tag=True)
    settings = cli_common.load(args)
    store = cli_common.open_store(settings, reading=True)
    assert ref.tag is not None
    events = store.history(ref.name, ref.tag)
    if args.json:
        cli_common.print_json([views.event_json(e) for e in events])
        return EXIT_OK
    if not events:
        print(f"no events recorded for {ref.name}:{ref.tag}")
        return EXIT_OK
    rows = []
    for e in events:
        platforms = e.detail.get("changed_platforms") or []
        rows.append(
            (
                cli_common.when(e.at),
                e.kind.value,
                e.old_digest or "-",
                e.new_digest or "-",
                ", ".join(platforms) if platforms else "",
                views.event_by(e),
            )
        )
    cli_common.print_table(("WHEN", "EVENT", "OLD DIGEST", "NEW DIGEST", "PLATFORMS", "BY"), rows)
    return EXIT_OK


# --- restore / accept / guard ---------------------------------------------------------------------


def _actions(
    store: store_repo.Store, registries: actions.Registries | None = None
) -> actions.Actions:
    """Restores and accepts from the command line: each holds its repository's claim, so that no
    daemon's check of it runs meanwhile (PostgreSQL), waiting for one under way a while."""
    from watchdog import actions
    from watchdog.store import claims

    hold = actions.claims_hold(claims.Claims(store.engine))
    return actions.Actions(store, hold, registries=registries)


def _restore(args: argparse.Namespace) -> int:
    """One REF, several, --drifted or --incident (``actions.plan_all``: all judged before any
    change)."""
    from watchdog import actions, aiorun, models, service, views

    by_incident = args.incident is not None
    several = args.drifted or by_incident or len(args.refs) > 1
    actions.check_restore_request(
        args.refs, args.drifted, args.repository, args.digest, incident=args.incident
    )
    digest = models.check_digest(args.digest) if args.digest else None
    refs = actions.parse_refs(args.refs)  # a bad REF is refused before the config is read
    settings = cli_common.load(args)
    store = cli_common.open_store(settings)
    if by_incident:
        refs = actions.incident_refs(store, args.incident)  # UsageError for an unknown id
    elif args.drifted:
        refs = actions.drifted_refs(store, args.repository)
    if (args.drifted or by_incident) and not refs:
        if not args.json:  # said so, exit 0
            print(
                actions.nothing_in_incident(args.incident)
                if by_incident
                else actions.nothing_drifted(store, args.repository)
            )
        return _show_outcomes(args, [], several=True, dry_run=args.dry_run)

    def show_plans(planned: list[actions.TagResult]) -> None:  # shown first, then carried out
        if not args.json and (several or args.dry_run):
            print("\n".join(terminal.safe(s) for s in views.plans_text(planned, several=several)))

    async def go() -> list[actions.TagResult]:
        clients = service.Clients(settings)
        try:
            acts = _actions(store, clients.get)
            return await actions.restore_all(
                acts, refs, digest, actions.cli_actor(), dry_run=args.dry_run, show=show_plans
            )
        finally:
            await clients.aclose()

    return _show_outcomes(args, aiorun.run(go()), several=several, dry_run=args.dry_run)


def _show_outcomes(
    args: argparse.Namespace, results: list[actions.TagResult], *, several: bool, dry_run: bool
) -> int:
    from watchdog import views

    if args.json:
        shown = dry_run if args.command == "restore" else None
        cli_common.print_json(views.outcomes_json(results, several=several, dry_run=shown))
    else:
        out, err = views.outcomes_text(results, several=several, dry_run=dry_run)
        if out:
            print("\n".join(terminal.safe(line) for line in out))
        if err:
            for line in err:  # one line each: JSON lines with --log-format json
                cli_common.say(f"tag-watchdog: {terminal.safe(line)}", f"{args.command}_failed")
    return views.worst_exit_code(results)


def _accept(args: argparse.Namespace) -> int:
    from watchdog import actions, aiorun

    refs = actions.parse_refs(args.refs)
    store = cli_common.open_store(cli_common.load(args))
    accepting = actions.accept_all(_actions(store), refs, args.reason, actions.cli_actor())
    return _show_outcomes(args, aiorun.run(accepting), several=len(refs) > 1, dry_run=False)


# --- db / config ---------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> int:
    from watchdog import config
    from watchdog.store import db

    settings = cli_common.load(args)
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

    settings = cli_common.load(args, need_watches=True)
    if args.json:
        cli_common.print_json(config.masked(settings))
    else:
        print(config.to_yaml(settings))
    return EXIT_OK


# --- alerts --------------------------------------------------------------------------------------


def _alerts_test(args: argparse.Namespace) -> int:
    from watchdog import aiorun
    from watchdog.alerts import outbox

    settings = cli_common.load(args)
    results = aiorun.run(outbox.send_test(settings))
    if not results:
        cli_common.say(
            "tag-watchdog: no alert channel configured "
            "(set slack.webhook_url, or slack.token and slack.channel)",
            "no_alert_channel",
        )
        return EXIT_USAGE
    for channel, error in sorted(results.items()):
        print(terminal.safe(f"{channel}: {'sent' if error is None else 'FAILED: ' + error}"))
    return EXIT_FAILED if any(e is not None for e in results.values()) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
