"""``tag-watchdog guard``: the release guard's command line (the decision is ``guard.decide``).

Apart from ``cli`` so that the command line stays one module a person can read; ``cli`` keeps
turning errors into text.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from watchdog import cli_common, config, errors, terminal


def run(args: argparse.Namespace) -> int:
    """Parses, gathers the answers, prints: the decision is ``guard.decide``'s. With ``--json``
    one document in every outcome (usage and could-not-complete included)."""
    try:
        return _all(args)
    except errors.WatchdogError as exc:
        if not args.json:
            raise
        cli_common.print_json({"exit_code": exc.exit_code, "error": str(exc), "results": []})
        return exc.exit_code


def _all(args: argparse.Namespace) -> int:
    from watchdog import aiorun, guard, models

    refs = [models.ImageRef.parse(r, require_tag=True) for r in args.ref]
    allowed = models.check_digest(args.allow_digest) if args.allow_digest else None
    settings = cli_common.load(args)
    answers = aiorun.run(_ask(args, settings, refs))
    memories = _memories(args, settings, refs)
    verdicts = [
        guard.decide(f"{r.name}:{r.tag}", a, m, allowed)
        for r, a, m in zip(refs, answers, memories, strict=True)
    ]
    code = guard.worst([v.code for v in verdicts])
    if args.json:
        cli_common.print_json({"exit_code": code, "results": [v.to_json() for v in verdicts]})
        return code
    for verdict in verdicts:
        if verdict.code == guard.UNSURE:
            cli_common.say(f"tag-watchdog: {terminal.safe(guard.text(verdict))}", "guard_unsure")
        else:
            print(terminal.safe(guard.text(verdict), multiline=True))
    return code


async def _ask(
    args: argparse.Namespace, settings: config.Settings, refs: Sequence[Any]
) -> list[Any]:
    """The registry's answer about each of ``refs`` (one client per registry, asked at once;
    the guard's TLS flags are in ``settings`` already: ``_load``)."""
    import asyncio
    import contextlib

    from watchdog import guard
    from watchdog.registry import client as registry_client

    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, registry_client.RegistryClient] = {}
        for host in dict.fromkeys(r.host for r in refs):
            clients[host] = await stack.enter_async_context(
                registry_client.RegistryClient(settings.registry(host))
            )
        return list(await asyncio.gather(*(guard.ask(clients[r.host], r) for r in refs)))


def _memories(
    args: argparse.Namespace, settings: config.Settings, refs: Sequence[Any]
) -> list[Any]:
    """What the record of a given config remembers about each of ``refs``; Nones without a
    config (the registry alone decides). A database that cannot be read is each one's error:
    then an absent tag is "cannot tell" (it may have been released and deleted)."""
    from watchdog import guard

    if cli_common.config_path(args) is None:
        return [None] * len(refs)
    from watchdog.store import db
    from watchdog.store import repo as store_repo

    engine = db.create_engine(settings.database_url.reveal())
    try:
        if (missing := db.missing_sqlite_file(engine)) is not None:
            raise errors.DatabaseUnavailable(f"no database at {missing}")
        db.ensure_schema(engine, migrate_empty=False)
        store = store_repo.Store(engine)
        return [
            guard.Memory(store.get_tag(r.name, r.tag), tuple(store.history(r.name, r.tag)))
            for r in refs
        ]
    except errors.StoreError as exc:
        return [guard.Memory(error=str(exc)) for _ in refs]
    finally:
        engine.dispose()
