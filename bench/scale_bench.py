"""Peak RSS and tags/s of `tag-watchdog scan` at 100,000 tags (issue 6: peak RSS <= 150 MB).

    .venv/bin/python -m bench.scale_bench [--repos 1000] [--tags 100] [--multi 10] [--rounds 3]
        [--pg postgresql+psycopg://user:pw@host/db] [--no-sqlite] [--registry-dir DIR]

Starts Debian's docker-registry on 127.0.0.1 (own storage under $TMPDIR, removed afterwards),
seeds it with bench.fleet_bench.seed (one image per repository, ``--tags`` tags on it, plus
``--multi`` multi-arch repositories of 10 tags), then, per round, on a new empty database:

* cold: `tag-watchdog scan` records every tag (HEAD + verified GET each, baselines, archive);
* warm: `tag-watchdog scan` again, nothing changed (HEAD each, one batched UPDATE per repository).

Each scan is a new process, measured alone (``wait4``): wall, tags/s, CPU seconds and peak RSS.
With ``--pg`` (a URL of a role allowed to CREATE DATABASE) the same runs on a PostgreSQL database
created for the bench and dropped afterwards. Prints a Markdown table for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import fleet_bench
from tests.support import registry as support_registry

TARGET_MB = 150


def scan(cfg: Path, work: Path) -> dict[str, Any]:
    run = fleet_bench.cli_scan(cfg, work, "--json")
    data = json.loads(run["stdout"])
    bad = [w for w in data["watches"] if w["error"] or w["tag_errors"]]
    if bad:
        raise SystemExit(f"scan incomplete: {bad[:3]}")
    run["tags"] = sum(w["tags_checked"] for w in data["watches"])
    run["events"] = sum(len(w["events"]) for w in data["watches"])
    del run["stdout"], run["stderr"]
    return run


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


class PostgresDatabase:
    """A database of its own on the server of ``admin_url``, dropped on exit."""

    def __init__(self, admin_url: str) -> None:
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.name = f"tw_scale_{uuid.uuid4().hex[:8]}"
        self.url = sa.make_url(admin_url).set(database=self.name)

    def __enter__(self) -> str:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        return self.url.render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def rounds_on(
    label: str,
    database_url: Any,
    server: support_registry.RegistryServer,
    refs: list[tuple[str, str]],
    work: Path,
    n: int,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` rounds of (cold, warm) scans, each round on a new empty database made by
    ``database_url(round)`` (a context manager giving the URL)."""
    out = []
    for i in range(n):
        with database_url(i) as url:
            cfg = fleet_bench.write_config(work / f"{label}{i}.yaml", server, url, refs)
            before = load()
            cold = scan(cfg, work)
            warm = scan(cfg, work)
            cold["load"], warm["load"] = before, load()
        print(
            f"# {label} round {i + 1}: cold {cold['wall']:.1f}s {cold['maxrss_mb']:.0f} MB, "
            f"warm {warm['wall']:.1f}s {warm['maxrss_mb']:.0f} MB ({before}; after: {warm['load']})",
            file=sys.stderr,
        )
        out.append((cold, warm))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--multi", type=int, default=10, help="multi-arch repositories (10 tags)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg", help="PostgreSQL URL of a role with CREATEDB")
    parser.add_argument("--pg-rounds", type=int, default=1)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--seed-workers", type=int, default=4)
    parser.add_argument(
        "--registry-dir",
        type=Path,
        help="keep the seeded registry storage here and reuse it when run again with the same "
        "--repos/--tags/--multi (seeding 100,000 tags takes minutes)",
    )
    args = parser.parse_args()

    results: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="tw-scale-") as tmp:
        work = Path(tmp)
        registry_dir = args.registry_dir or work / "registry"
        server = support_registry.RegistryServer(registry_dir, "open").start()
        try:
            t0 = time.perf_counter()
            seeded_file = registry_dir / "seeded.json"
            shape = [args.repos, args.tags, args.multi]
            if seeded_file.exists() and json.loads(seeded_file.read_text())["shape"] == shape:
                saved = json.loads(seeded_file.read_text())
                refs = [(r, t) for r, t in saved["refs"]]
                seeding = f"seeded earlier in {saved['seconds']:.0f}s, reused"
            else:
                refs = fleet_bench.seed(
                    server, args.repos, args.tags, multi=args.multi, workers=args.seed_workers
                )
                seconds = time.perf_counter() - t0
                seeded_file.write_text(
                    json.dumps({"shape": shape, "refs": refs, "seconds": seconds})
                )
                seeding = f"seeded in {seconds:.0f}s, {args.seed_workers} workers"
            print(f"# {len(refs)} tags {seeding} ({load()})", file=sys.stderr)

            class SqliteFile:
                def __init__(self, i: int) -> None:
                    self.path = work / f"w{i}.db"

                def __enter__(self) -> str:
                    return f"sqlite:///{self.path}"

                def __exit__(self, *exc: object) -> None:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{self.path}{suffix}").unlink(missing_ok=True)

            if not args.no_sqlite:
                results["SQLite"] = rounds_on("sqlite", SqliteFile, server, refs, work, args.rounds)
            if args.pg:
                pg_url = args.pg
                results["PostgreSQL"] = rounds_on(
                    "pg", lambda _i: PostgresDatabase(pg_url), server, refs, work, args.pg_rounds
                )
        finally:
            server.close()

    repos = len({r for r, _ in refs})
    print(
        f"{len(refs)} tags in {repos} repositories ({seeding}); concurrency "
        f"{fleet_bench.CONCURRENCY}; python {sys.version.split()[0]}; {os.cpu_count()} cpus"
    )
    print()
    print("| database | scan | rounds | wall | tags/s | CPU s / 1,000 tags | peak RSS (max) |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, runs in results.items():
        for kind, idx in (("cold (records every tag)", 0), ("warm (nothing changed)", 1)):
            rs = [r[idx] for r in runs]
            wall = statistics.median(r["wall"] for r in rs)
            tags = rs[0]["tags"]
            cpu = statistics.median(r["cpu"] for r in rs)
            rss = [r["maxrss_mb"] for r in rs]
            worst = max(worst, *rss)
            print(
                f"| {name} | {kind} | {len(rs)} | {wall:.1f} s | {tags / wall:.0f} | "
                f"{cpu / tags * 1000:.2f} | {statistics.median(rss):.0f} MB ({max(rss):.0f}) |"
            )
    print()
    verdict = "met" if worst <= TARGET_MB else "MISSED"
    print(f"peak RSS target <= {TARGET_MB} MB: {verdict} (worst {worst:.0f} MB)")


if __name__ == "__main__":
    main()
