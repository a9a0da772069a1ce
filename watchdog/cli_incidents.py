"""``tag-watchdog incidents``: the recent incidents, or one of them (issue 16).

Apart from ``cli`` so that the command line stays one module a person can read; ``cli`` hands in
the store (``run``) and keeps turning errors into text. The shapes and lines are ``views``'s,
shared with the HTTP API (``GET /api/v1/incidents``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from watchdog import errors, models, views

if TYPE_CHECKING:
    from watchdog.store import repo as store_repo


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``incidents`` command on ``sub`` (cli's subparsers)."""
    p = sub.add_parser(
        "incidents",
        parents=[common],
        help="the recent incidents (changes grouped into one alert), or one of them",
        epilog="Without ID: the newest first, each with its tags and where they stand now. "
        "With ID: every tag of that incident, old -> new digest, who did what. "
        "`restore --incident ID` puts back what is still drifted, deleted or broken.",
    )
    p.add_argument("id", metavar="ID", nargs="?", type=int, help="one incident, by its id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--repository", help="only incidents with a change of this repository")
    p.add_argument(
        "--limit",
        type=int,
        help=f"at most this many incidents (default {views.INCIDENTS_LISTED})",
    )


def check(args: argparse.Namespace) -> None:
    """UsageError for options that do not go together (before the config is read)."""
    if args.id is not None and (args.repository or args.limit is not None):
        raise errors.UsageError("--repository and --limit go with the list: give no ID with them")
    if args.limit is not None and args.limit < 1:
        raise errors.UsageError("--limit must be 1 or more")


def run(args: argparse.Namespace, store: store_repo.Store, now: models.Clock) -> int:
    """List the recent incidents, or show ``args.id`` (UsageError when there is none)."""
    if args.id is not None:
        incident = store.incidents.get(args.id)
        if incident is None:
            raise errors.UsageError(views.no_incident(args.id))
        if args.json:
            _print_json(views.incident_json(incident, now(), events=True))
        else:
            print("\n".join(views.incident_text(incident, now())))
        return 0
    repository = None
    if args.repository:
        repository = models.ImageRef.parse(args.repository, allow_tag=False).name
    incidents = store.incidents.recent(args.limit or views.INCIDENTS_LISTED, repository)
    if args.json:
        _print_json([views.incident_json(i, now()) for i in incidents])
    elif not incidents:
        of = f" of {repository}" if repository else ""
        print(f"no incidents{of} recorded (a move, deletion or broken release opens one)")
    else:
        print("\n".join(views.incidents_text(incidents, now())))
    return 0


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
