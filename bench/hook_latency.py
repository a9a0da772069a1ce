"""Push -> alert and push -> restored latency with registry notifications, polling set to 1 hour.

    .venv/bin/python -m bench.hook_latency [--pushes 20]

Starts Debian's docker-registry configured to notify a `tag-watchdog run` (SQLite, interval 1h,
Slack incoming webhook pointed at a local stand-in), overwrites a watched release tag N times and
measures from the start of each manifest PUT to:

* the move counted in the daemon's /metrics (`on_move: alert`);
* the Slack stand-in receiving the move alert (`on_move: alert`);
* the tag answering the recorded digest again (`on_move: restore`).

Each overwrite is an incident of its own (`incidents: {window: 0s}`): the figure is the time to
an incident's first message, which goes out with its first change (`incidents.wait: 0s`); moves
joining an open incident are told later, at most every `incidents.update_interval`.

Prints median, p95 and max of each.
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
from tests.support.slack_standin import SlackStandIn
from watchdog import models
from watchdog.registry import media

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


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[max(0, round(0.95 * len(values)) - 1)]
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {values[-1] * 1000:.0f} ms"
    )


def run(pushes: int, on_move: str) -> dict[str, list[float]]:
    port = free_port()
    extra = (
        "notifications:\n  endpoints:\n    - name: tag-watchdog\n"
        f"      url: http://127.0.0.1:{port}/hooks/registry\n"
        f"      headers:\n        Authorization: [Bearer {TOKEN}]\n"
        "      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
        "      ignore:\n        actions: [pull]\n"
    )
    out: dict[str, list[float]] = {"detected": [], "slack": [], "restored": []}
    with tempfile.TemporaryDirectory(prefix="tw-hook-") as tmp:
        work = Path(tmp)
        server = support_registry.RegistryServer(work / "r", "open", extra_config=extra).start()
        slack = SlackStandIn().start()
        daemon = None
        try:
            with images.Pusher(server.url) as pusher:
                builds = [
                    pusher.index("deephaven/server", None, seed=f"b{i}") for i in range(pushes + 1)
                ]
                pusher.tag("deephaven/server", "0.15.0", builds[0].index)
                cfg = work / "c.yaml"
                cfg.write_text(
                    f"database_url: sqlite:///{work / 'w.db'}\ninterval: 1h\njitter: 0s\n"
                    f"http: {{listen: '127.0.0.1:{port}'}}\nhooks: {{registry_token: '{TOKEN}'}}\n"
                    f"slack: {{webhook_url: '{slack.webhook_url}'}}\n"
                    f"watches: [{{repository: '{server.host}/deephaven/server', on_move: {on_move}}}]\n"
                    "restore: {max_per_tag: 1000, window: 1h}\n"
                    "incidents: {window: 0s}\n"  # each push an incident: its first message
                )
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "watchdog", "run", "-c", str(cfg)],
                    cwd=work,
                    env=clean_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=(work / "daemon.log").open("w"),
                )
                name = f"{server.host}/deephaven/server"
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
                    while not ready(client):  # the first check (the baseline) is done
                        time.sleep(0.05)
                    for i in range(1, pushes + 1):
                        short = "-&gt; " + models.short_digest(builds[i].digest)  # in the alert
                        # timed from the start of the PUT: the watchdog may act before the
                        # registry has answered the pusher (the event is sent first)
                        pushed = time.perf_counter()
                        pusher.tag("deephaven/server", "0.15.0", builds[i].index)
                        seen = {k: False for k in out}
                        while not all(seen[k] for k in wanted(on_move)):
                            now = time.perf_counter()
                            if now - pushed > 30:
                                log = (work / "daemon.log").read_text().splitlines()[-15:]
                                raise SystemExit(
                                    f"push {i}: not seen within 30 s: {seen}\n" + "\n".join(log)
                                )
                            if not seen["detected"] and moves(client, name) >= i:
                                seen["detected"] = True
                                out["detected"].append(time.perf_counter() - pushed)
                            if not seen["slack"] and any(
                                short in m.get("text", "") for m in slack.messages()
                            ):
                                seen["slack"] = True
                                out["slack"].append(time.perf_counter() - pushed)
                            if (
                                on_move == "restore"
                                and not seen["restored"]
                                and digest_of(server.url) == builds[0].digest
                            ):
                                seen["restored"] = True
                                out["restored"].append(time.perf_counter() - pushed)
                            time.sleep(0.005)
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
            slack.stop()
            server.close()
    return out


def wanted(on_move: str) -> tuple[str, ...]:
    return ("detected", "slack", "restored") if on_move == "restore" else ("detected", "slack")


def digest_of(base: str) -> str | None:
    resp = httpx.head(
        f"{base}/v2/deephaven/server/manifests/0.15.0", headers={"Accept": media.ACCEPT}
    )
    return resp.headers.get("docker-content-digest")


def main() -> None:
    parser = argparse.ArgumentParser(description="push -> alert / restored latency")
    parser.add_argument("--pushes", type=int, default=20)
    args = parser.parse_args()
    alert = run(args.pushes, "alert")
    restored = run(args.pushes, "restore")
    print(f"{args.pushes} overwrites of a multi-arch 0.15.0 each, poll interval 1 h:")
    print(f"  push -> move detected (in /metrics):   {percentiles(alert['detected'])}")
    print(f"  push -> Slack stand-in has the alert:  {percentiles(alert['slack'])}")
    print(f"  push -> tag restored (on_move restore): {percentiles(restored['restored'])}")


if __name__ == "__main__":
    main()
