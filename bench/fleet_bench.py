"""Fleet-scale scan benchmark: 100 repositories x 100 tags (+ 10 multi-arch repositories).

    .venv/bin/python -m bench.fleet_bench [--repos 100] [--tags 100] [--rounds 3] [--limits 8,110]

Starts Debian's docker-registry on 127.0.0.1 (own storage, removed afterwards), seeds it, records
everything once (a cold scan), then measures, alternating rounds so that drift hits both:

(a) a warm check of every watch by the watchdog, in process (service.Checker on SQLite, the same
    code `tag-watchdog scan` runs): wall, client CPU, SQL statements per cycle;
(b) a bare httpx HEAD loop over the same tags at the same concurrency (the client limit);
(c) a skopeo loop (`skopeo inspect --raw`, one process per tag) over 100 tags;

and, once, `tag-watchdog scan` of everything as a user runs it (a fresh process: peak RSS).
Prints a Markdown table for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support import images
from tests.support import registry as support_registry
from watchdog import config, metrics, service
from watchdog.registry import media
from watchdog.store import db, repo

CONCURRENCY = 8


def seed(
    server: support_registry.RegistryServer,
    repos: int,
    tags: int,
    *,
    multi: int = 10,
    workers: int = 1,
) -> list[tuple[str, str]]:
    """Push one image per repository ``fleet/appNNN`` and point ``tags`` release tags at it, plus
    ``multi`` multi-arch repositories ``fleet/multiNN`` of 10 tags each; ``workers`` repositories
    at a time (each its own connection). Returns (repository, tag) of every tag, in order."""

    def app(r: int) -> list[tuple[str, str]]:
        name = f"fleet/app{r:03d}"
        with images.Pusher(server.url) as pusher:
            image = pusher.image(name, None, seed=f"fleet-{r}")
            for i in range(tags):
                pusher.tag(name, f"1.{i // 10}.{i % 10}", image)
        return [(name, f"1.{i // 10}.{i % 10}") for i in range(tags)]

    def multi_arch(r: int) -> list[tuple[str, str]]:
        name = f"fleet/multi{r:02d}"
        with images.Pusher(server.url) as pusher:
            index = pusher.index(name, None, seed=f"multi-{r}")
            for i in range(10):
                pusher.tag(name, f"2.0.{i}", index.index)
        return [(name, f"2.0.{i}") for i in range(10)]

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        done = [
            *pool.map(app, range(repos)),
            *pool.map(multi_arch, range(multi)),
        ]
    return [ref for refs in done for ref in refs]


def settings_for(
    server: support_registry.RegistryServer, database: Path, refs: list[tuple[str, str]]
) -> config.Settings:
    repos = sorted({r for r, _ in refs})
    return config.from_mapping(
        {
            "database_url": f"sqlite:///{database}",
            "registries": [{"host": server.host, "max_concurrency": CONCURRENCY}],
            "watches": [f"{server.host}/{r}" for r in repos],
        },
        {},
    )


def write_config(
    path: Path,
    server: support_registry.RegistryServer,
    database_url: str,
    refs: list[tuple[str, str]],
) -> Path:
    """The config file of a `tag-watchdog scan` of every repository in ``refs``."""
    path.write_text(
        f"database_url: {database_url}\n"
        f"registries: [{{host: '{server.host}', max_concurrency: {CONCURRENCY}}}]\n"
        "watches:\n" + "".join(f"  - {server.host}/{r}\n" for r in sorted({r for r, _ in refs}))
    )
    return path


async def watchdog_cycle(
    settings: config.Settings, store: repo.Store, limit: int = service.MAX_CONCURRENT_CHECKS
) -> dict[str, float]:
    """One check of every watch the way `tag-watchdog scan` does it (``service.check_all``, at
    most ``limit`` watches at once)."""
    statements = 0
    results: list[service.CheckResult] = []

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    clients = service.Clients(settings)
    checker = service.Checker(settings, store, clients, metrics.Metrics())
    sa.event.listen(store.engine, "before_cursor_execute", count)
    cpu0, start = time.process_time(), time.perf_counter()
    try:
        await service.check_all(checker, settings.watches, results.append, limit=limit)
    finally:
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        sa.event.remove(store.engine, "before_cursor_execute", count)
        await clients.aclose()
    assert all(r.ok for r in results), [r.error or r.tag_errors for r in results if not r.ok][:3]
    tags = sum(r.tags_checked for r in results)
    events = sum(len(r.events) for r in results)
    return {"wall": wall, "cpu": cpu, "tags": tags, "events": events, "statements": statements}


async def bare_loop(host: str, refs: list[tuple[str, str]]) -> dict[str, float]:
    clients = [
        httpx.AsyncClient(base_url=f"http://{host}", limits=httpx.Limits(max_connections=4))
        for _ in range(CONCURRENCY // 4)
    ]
    todo = list(refs)
    headers = {"Accept": media.ACCEPT}

    async def worker(n: int) -> None:
        client = clients[n % len(clients)]
        while todo:
            name, tag = todo.pop()
            resp = await client.head(f"/v2/{name}/manifests/{tag}", headers=headers)
            resp.raise_for_status()

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(CONCURRENCY)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    for c in clients:
        await c.aclose()
    return {"wall": wall, "cpu": cpu, "tags": len(refs)}


def skopeo_loop(host: str, refs: list[tuple[str, str]]) -> dict[str, float] | None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for name, tag in refs:
        subprocess.run(
            [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{name}:{tag}"],
            check=True,
            capture_output=True,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "tags": len(refs)}


# The measured process is started by this small parent (a bare interpreter, ~10 MB), never by the
# bench itself: Linux counts in a child's ru_maxrss the parent's pages it shares between fork and
# exec, so a bench holding 250 MB of parsed results reported >= 250 MB for any scan it started.
_MEASURE = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({
        "wall": time.perf_counter() - start,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "code": os.waitstatus_to_exitcode(status),
    }, f)
"""


def run_measured(cmd: list[str], workdir: Path) -> dict[str, Any]:
    """Run ``cmd`` to the end; its own wall time, CPU seconds and peak RSS (``wait4`` on this one
    process, started by a small parent: see ``_MEASURE``), exit code and output."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".json") as usage,
    ):
        subprocess.run(
            [sys.executable, "-c", _MEASURE, usage.name, *cmd],
            stdout=out,
            stderr=err,
            cwd=workdir,
            check=True,
        )
        out.seek(0)
        err.seek(0)
        return {
            **json.loads(usage.read()),
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def cli_scan(config_path: Path, workdir: Path, *extra: str) -> dict[str, Any]:
    """``tag-watchdog scan`` as a user runs it (a new process); exit 0 or 1 (drift) expected."""
    cmd = [sys.executable, "-m", "watchdog", "scan", *extra, "-c", str(config_path)]
    run = run_measured(cmd, workdir)
    if run["code"] not in (0, 1):
        raise SystemExit(f"scan failed ({run['code']}): {run['stderr'][-2000:]}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description="fleet-scale scan benchmark")
    parser.add_argument("--repos", type=int, default=100)
    parser.add_argument("--tags", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--limits",
        default=str(service.MAX_CONCURRENT_CHECKS),
        help="watches checked at once in (a), comma-separated to compare (default: scan's)",
    )
    args = parser.parse_args()
    limits = [int(x) for x in args.limits.split(",")]
    with tempfile.TemporaryDirectory(prefix="tw-fleet-") as tmp:
        work = Path(tmp)
        server = support_registry.RegistryServer(work / "registry", "open").start()
        try:
            t0 = time.perf_counter()
            refs = seed(server, args.repos, args.tags)
            print(f"# seeded {len(refs)} tags in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
            database = work / "w.db"
            settings = settings_for(server, database, refs)
            engine = db.create_engine(settings.database_url.reveal())
            db.ensure_schema(engine, migrate_empty=True)
            store = repo.Store(engine)
            cold = asyncio.run(watchdog_cycle(settings, store, limits[0]))
            warms: dict[int, list[dict[str, float]]] = {limit: [] for limit in limits}
            bare: list[dict[str, float]] = []
            for _ in range(args.rounds):
                for limit in limits:
                    warms[limit].append(asyncio.run(watchdog_cycle(settings, store, limit)))
                bare.append(asyncio.run(bare_loop(server.host, refs)))
            skopeo = skopeo_loop(server.host, refs[:100])
            cfg = write_config(work / "c.yaml", server, f"sqlite:///{database}", refs)
            scan = cli_scan(cfg, work)
            engine.dispose()
        finally:
            server.close()

    def rate(runs: list[dict[str, float]]) -> tuple[float, float, float]:
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        tags = runs[0]["tags"]
        return tags / wall, cpu / tags * 1000, wall

    warm = warms[limits[0]]
    a = rate(warm)[0]
    b, b_cpu, b_wall = rate(bare)
    c_rate = (skopeo["tags"] / skopeo["wall"]) if skopeo else float("nan")
    c_cpu = (skopeo["cpu"] / skopeo["tags"] * 1000) if skopeo else float("nan")
    n = len(refs)
    print(
        f"{n} tags in {len({r for r, _ in refs})} repositories; median of {args.rounds} rounds; "
        f"concurrency {CONCURRENCY}; python {sys.version.split()[0]}"
    )
    print()
    print("| run | tags | wall | tags/s | client CPU s / 1,000 tags | SQL statements |")
    print("|---|---|---|---|---|---|")
    print(
        f"| cold check (records everything) | {cold['tags']:.0f} | {cold['wall']:.2f} s | "
        f"{cold['tags'] / cold['wall']:.0f} | {cold['cpu'] / cold['tags'] * 1000:.2f} | "
        f"{cold['statements']:.0f} |"
    )
    for limit, runs in warms.items():
        r_rate, r_cpu, r_wall = rate(runs)
        print(
            f"| (a) warm check, watchdog in process, {limit} watches at once | {n} | "
            f"{r_wall:.2f} s | {r_rate:.0f} | {r_cpu:.2f} | "
            f"{statistics.median(r['statements'] for r in runs):.0f} |"
        )
    print(f"| (b) bare httpx HEAD loop | {n} | {b_wall:.2f} s | {b:.0f} | {b_cpu:.2f} | - |")
    if skopeo:
        print(
            f"| (c) skopeo loop | {skopeo['tags']:.0f} | {skopeo['wall']:.2f} s | {c_rate:.0f} | "
            f"{c_cpu:.2f} | - |"
        )
    print(
        f"| `tag-watchdog scan` (new process, warm DB) | {n} | {scan['wall']:.2f} s | "
        f"{n / scan['wall']:.0f} | {scan['cpu'] / n * 1000:.2f} | peak RSS {scan['maxrss_mb']:.0f} MB |"
    )
    print()
    for limit, runs in list(warms.items())[1:]:
        print(f"with {limit} watches at once: a/b = {rate(runs)[0] / b:.2f}")
    print(
        f"a/b = {a / b:.2f} with {limits[0]} watches at once (target >= 0.85); a/c = {a / c_rate:.1f} (target >= 15); "
        f"SQL statements per unchanged cycle: {statistics.median(r['statements'] for r in warm):.0f} "
        f"for {len({r for r, _ in refs})} repositories"
    )


if __name__ == "__main__":
    main()
