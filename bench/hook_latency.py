"""Push -> detection latency with registry notifications, the poll interval set to one hour.

    .venv/bin/python -m bench.hook_latency [--pushes 20]

Starts Debian's docker-registry configured to notify a `tag-watchdog run` (SQLite, interval 1h),
overwrites a watched release tag N times and measures, for each push, the time from the end of the
manifest PUT to the move being counted in the daemon's /metrics (polled every 5 ms). Prints the
median, p95 and max.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import clean_env

TOKEN = "bench-hook-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moves(client: httpx.Client, name: str) -> float:
    try:
        text = client.get("/metrics").text
    except httpx.TransportError:
        return -1.0
    for line in text.splitlines():
        if line.startswith("tag_watchdog_tag_moves_total{") and f'repository="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description="push -> detection latency via notifications")
    parser.add_argument("--pushes", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    extra = (
        "notifications:\n  endpoints:\n    - name: tag-watchdog\n"
        f"      url: http://127.0.0.1:{port}/hooks/registry\n"
        f"      headers:\n        Authorization: [Bearer {TOKEN}]\n"
        "      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
        "      ignore:\n        actions: [pull]\n"
    )
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tw-hook-") as tmp:
        work = Path(tmp)
        server = support_registry.RegistryServer(work / "r", "open", extra_config=extra).start()
        daemon = None
        try:
            with images.Pusher(server.url) as pusher:
                builds = [
                    pusher.index("deephaven/server", None, seed=f"b{i}")
                    for i in range(args.pushes + 1)
                ]
                pusher.tag("deephaven/server", "0.15.0", builds[0].index)
                cfg = work / "c.yaml"
                cfg.write_text(
                    f"database_url: sqlite:///{work / 'w.db'}\ninterval: 1h\njitter: 0s\n"
                    f"http: {{listen: '127.0.0.1:{port}'}}\nhooks: {{registry_token: '{TOKEN}'}}\n"
                    f"watches: ['{server.host}/deephaven/server']\n"
                )
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "watchdog", "run", "-c", str(cfg)],
                    cwd=work,
                    env=clean_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                name = f"{server.host}/deephaven/server"
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
                    while not ready(client):  # the first check (the baseline) is done
                        time.sleep(0.05)
                    for i in range(1, args.pushes + 1):
                        pusher.tag("deephaven/server", "0.15.0", builds[i].index)
                        pushed = time.perf_counter()
                        while moves(client, name) < i:
                            if time.perf_counter() - pushed > 30:
                                raise SystemExit(f"push {i}: move not seen within 30 s")
                            time.sleep(0.005)
                        latencies.append(time.perf_counter() - pushed)
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
            server.close()
    latencies.sort()
    p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)]
    print(
        f"{len(latencies)} overwrites, interval 1h: push -> move detected (seen in /metrics): "
        f"median {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
