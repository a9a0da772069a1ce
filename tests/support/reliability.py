"""Render the figures tests/system/test_faults.py collects (``WATCHDOG_RELIABILITY_OUT``) as the
markdown table of docs/RELIABILITY.md: one row per fault, summed over routes and backends.

    WATCHDOG_RELIABILITY_OUT=/tmp/faults.json .venv/bin/pytest tests/system/test_faults.py
    .venv/bin/python -m tests.support.reliability /tmp/faults.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COUNTS = (
    "checks_under_fault",
    "errors_counted",
    "false_events",
    "lost_events",
    "alerts_under_fault",
    "duplicate_alerts",
    "lost_alerts",
)

# These cases check (watches ``on_move: alert``): no restore runs under the fault, so none can be
# half done. Restores under faults are tests of their own (docs/RELIABILITY.md).
NO_RESTORE = "-"


def rows(figures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fault, in the order first seen: routes, backends and summed counts."""
    out: dict[str, dict[str, Any]] = {}
    for f in figures:
        row = out.setdefault(
            f["fault"],
            {"fault": f["fault"], "what": f["what"], "cases": [], **dict.fromkeys(COUNTS, 0)},
        )
        row["cases"].append((f["backend"], f["route"]))
        for key in COUNTS:
            row[key] += f[key]
    return list(out.values())


def command(row: dict[str, Any]) -> str:
    selected = " or ".join(f"{backend}-{row['fault']}-{route}" for backend, route in row["cases"])
    return f'`pytest tests/system/test_faults.py -k "{selected}"`'


def render(figures: list[dict[str, Any]]) -> str:
    lines = [
        "| fault | injected | routes (backends) | checks under it | counted as errors "
        "| false alarms | lost events | alerts under it (real events) | duplicate / lost alerts "
        "| half restores | reproduce |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows(figures):
        routes: dict[str, list[str]] = {}
        for backend, route in row["cases"]:
            routes.setdefault(route, []).append(backend)
        where = ", ".join(f"{r} ({'+'.join(b)})" for r, b in routes.items())
        lines.append(
            f"| `{row['fault']}` | {row['what']} | {where} | {row['checks_under_fault']} "
            f"| {row['errors_counted']} | {row['false_events']} | {row['lost_events']} "
            f"| {row['alerts_under_fault']} | {row['duplicate_alerts']} / {row['lost_alerts']} "
            f"| {NO_RESTORE} | {command(row)} |"
        )
    total = {key: sum(r[key] for r in rows(figures)) for key in COUNTS}
    lines.append(
        f"| **all** | {len(figures)} cases | | {total['checks_under_fault']} "
        f"| {total['errors_counted']} | {total['false_events']} | {total['lost_events']} "
        f"| {total['alerts_under_fault']} | {total['duplicate_alerts']} / {total['lost_alerts']} "
        f"| {NO_RESTORE} | |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(render(json.loads(Path(argv[1]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
