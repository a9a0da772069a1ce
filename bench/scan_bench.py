"""Scan speed against a local registry: `tag-watchdog scan` vs a bare httpx HEAD loop.

    .venv/bin/python -m bench.scan_bench --tags 1000 [--repos 1] [--rounds 3]

Starts Debian's docker-registry on 127.0.0.1 (own storage, removed afterwards), pushes one image
and points N release tags at it, then measures, alternating so that drift hits both:

* cold scan: `tag-watchdog scan` on an empty SQLite database (records every tag: HEAD + GET each)
* warm scan: `tag-watchdog scan` again, nothing changed (HEAD each, one batched UPDATE)
* bare loop: httpx HEADs of the same tags with the same concurrency (8, over 2 clients of 4
  connections), no database: the client-side limit the watchdog is compared with.

Reports wall time, tags/s, client CPU seconds per 1,000 tags and peak RSS of the scan process.
The registry shares the machine's cores, so absolute figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import fleet_bench
from tests.support import images
from tests.support import registry as support_registry


def seed(server: support_registry.RegistryServer, repos: int, tags: int) -> list[tuple[str, str]]:
    refs = []
    with images.Pusher(server.url) as pusher:
        for r in range(repos):
            repo = f"bench/app{r}"
            image = pusher.image(repo, "0.0.0", seed=f"bench-{r}")
            refs.append((repo, "0.0.0"))
            for i in range(1, tags // repos):
                tag = f"1.{i // 100}.{i % 100}"
                pusher.tag(repo, tag, image)
                refs.append((repo, tag))
    return refs


def run_scan(config: Path, workdir: Path) -> dict[str, float]:
    run = fleet_bench.cli_scan(config, workdir, "--json")
    checked = sum(w["tags_checked"] for w in json.loads(run["stdout"])["watches"])
    return {"wall": run["wall"], "tags": checked, "cpu": run["cpu"], "maxrss_mb": run["maxrss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--repos", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        work = Path(tmp)
        server = support_registry.RegistryServer(work / "registry", "open").start()
        try:
            refs = seed(server, args.repos, args.tags)
            watches = "".join(
                f"  - {{repository: '{server.host}/bench/app{r}', tags: {{include: ['.*']}}}}\n"
                for r in range(args.repos)
            )
            cold, warm, bare = [], [], []
            for round_ in range(args.rounds):
                db = work / f"w{round_}.db"
                config = work / f"c{round_}.yaml"
                config.write_text(f"database_url: sqlite:///{db}\nwatches:\n{watches}")
                cold.append(run_scan(config, work))
                bare.append(asyncio.run(fleet_bench.bare_loop(server.host, refs)))
                warm.append(run_scan(config, work))
        finally:
            server.close()

    def summary(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
        wall = statistics.median(r["wall"] for r in runs)
        tags = runs[0]["tags"]
        out = {
            "tags": tags,
            "wall_s": round(wall, 3),
            "tags_per_s": round(tags / wall, 1),
            "cpu_s_per_1000": round(statistics.median(r["cpu"] for r in runs) / tags * 1000, 3),
        }
        if "maxrss_mb" in runs[0]:
            out["peak_rss_mb"] = round(max(r["maxrss_mb"] for r in runs), 1)
        print(f"{name:<34} " + "  ".join(f"{k}={v}" for k, v in out.items()))
        return out

    print(
        f"# {args.tags} tags in {args.repos} repositories, median of {args.rounds} rounds, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    )
    summary("scan, cold (records every tag)", cold)
    w = summary("scan, warm (nothing changed)", warm)
    b = summary("bare httpx HEAD loop", bare)
    print(
        f"warm scan / bare loop throughput: {w['tags_per_s'] / b['tags_per_s']:.2f} "
        "(the scan's wall time includes interpreter start-up and the database)"
    )


if __name__ == "__main__":
    main()
