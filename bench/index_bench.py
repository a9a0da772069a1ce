"""Memory and time of `tag-watchdog scan` on one tag whose index has many (or large) children.

    .venv/bin/python -m bench.index_bench [--children 100] [--child-bytes 4000000]
    .venv/bin/python -m bench.index_bench --children 20000 --child-bytes 0

Starts Debian's docker-registry on 127.0.0.1 (own storage, removed afterwards), pushes one
image's config and layer, then ``--children`` manifests over them, each padded with an
annotation to about ``--child-bytes`` bytes (0: no padding, ~500 bytes each; distribution
accepts manifests up to 4 MiB), and an OCI index over all of them tagged ``1.0.0``. Then runs
`tag-watchdog scan --json` once on an empty SQLite database (the first sight: the index and every
child are fetched and archived) and reports its wall time, CPU seconds and peak RSS (``wait4``
on the scan process itself), and the size of the SQLite file.

The issue-14 target: peak RSS under 150 MB for 100 children of 4 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import fleet_bench
from tests.support import images
from tests.support import registry as support_registry
from watchdog.registry import media

REPOSITORY = "bench/big-index"


def seed(server: support_registry.RegistryServer, children: int, child_bytes: int) -> str:
    """Push the index and its children; return the index's digest."""
    with images.Pusher(server.url) as pusher:
        # distribution checks every child of an index on its PUT: 20,000 take longer than 10 s
        pusher._http.timeout = httpx.Timeout(600.0)
        layer = pusher.layer(REPOSITORY, seed="big")
        cfg = pusher.config_blob(REPOSITORY, seed="big", layers=[layer])
        entries = []
        for i in range(children):
            doc = {
                "schemaVersion": 2,
                "mediaType": media.OCI_MANIFEST,
                "config": cfg.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": {"bench.index": str(i)},
            }
            base = len(json.dumps(doc, separators=(",", ":")))
            if child_bytes > base:
                doc["annotations"]["bench.padding"] = "x" * (child_bytes - base - 30)
            body = json.dumps(doc, separators=(",", ":")).encode()
            child = pusher.manifest(
                REPOSITORY, images.models.sha256_digest(body), body, doc["mediaType"]
            )
            # no platform: 20,000 descriptors must fit the index in distribution's 4 MiB
            entries.append(child.descriptor())
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries},
            separators=(",", ":"),
        ).encode()
        return pusher.manifest(REPOSITORY, "1.0.0", index, media.OCI_INDEX).digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--children", type=int, default=100)
    parser.add_argument("--child-bytes", type=int, default=4_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-index-bench-") as tmp:
        work = Path(tmp)
        server = support_registry.RegistryServer(work / "registry", "open").start()
        try:
            t0 = time.perf_counter()
            digest = seed(server, args.children, args.child_bytes)
            print(
                f"# seeded {args.children} children in {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
            )
            database = work / "w.db"
            config = work / "c.yaml"
            config.write_text(
                f"database_url: sqlite:///{database}\n"
                f"watches:\n  - repository: '{server.host}/{REPOSITORY}'\n"
            )
            run = fleet_bench.cli_scan(config, work, "--json")
            doc = json.loads(run["stdout"])
            (watch,) = doc["watches"]
            if watch.get("error") or watch.get("tag_errors"):
                raise SystemExit(f"scan did not record the tag: {watch}")
            db_mb = sum(p.stat().st_size for p in work.glob("w.db*")) / 1e6
        finally:
            server.close()
    print(
        json.dumps(
            {
                "children": args.children,
                "child_bytes": args.child_bytes,
                "index_digest": digest,
                "scan_wall_s": round(run["wall"], 2),
                "scan_cpu_s": round(run["cpu"], 2),
                "scan_maxrss_mb": round(run["maxrss_mb"], 1),
                "sqlite_mb": round(db_mb, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
