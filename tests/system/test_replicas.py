"""Several daemons on one PostgreSQL database split the work; a dead one's watches go on.

Three real `tag-watchdog run` processes share a real PostgreSQL database and a real registry
(behind a counting proxy). Each watch must be checked exactly once per interval (slot) in total,
not once per replica; a replica killed with SIGKILL changes nothing for the watches; an overwrite
is recorded once.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from watchdog.store import claims

INTERVAL = 2.0


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


@pytest.mark.postgres
def test_three_replicas_check_each_watch_once_per_interval(
    tmp_path: Path,
    pg_url: str,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Any,
) -> None:
    repos = [f"{repo}-a", f"{repo}-b"]
    releases = {r: pusher.image(r, "1.0.0", seed=r) for r in repos}
    proxy: faultproxy.FaultProxy = make_fault_proxy(registry)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: '{pg_url}'\ninterval: {INTERVAL}s\njitter: 0.4s\n"
        "watches:\n" + "".join(f"  - {proxy.host}/{r}\n" for r in repos)
    )
    ports = [free_port() for _ in range(3)]
    replicas = [
        start_daemon(cfg, tmp_path, {"WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{port}"}) for port in ports
    ]

    def checks_per_slot(seconds: float) -> dict[str, list[int]]:
        """For each watch, how many checks (tags/list requests) each of the slots that lie wholly
        in the next ``seconds`` saw."""
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        out = {}
        for r in repos:
            name = f"{proxy.host}/{r}"
            first = claims.slot_start(name, INTERVAL, _utc(start)).timestamp() + INTERVAL
            slots = [first + i * INTERVAL for i in range(int((end - first) // INTERVAL))]
            times = [s.at for s in list(proxy.seen) if s.path.startswith(f"/v2/{r}/tags/list")]
            out[r] = [sum(1 for t in times if a <= t < a + INTERVAL) for a in slots]
        return out

    try:
        wait_for(
            lambda: all(http_status(p) == 200 for p in ports),
            timeout=30,
            what="the replicas to be ready",
        )
        span = 6 * INTERVAL
        # exactly one check per watch per slot; three replicas checking on their own would make
        # three, and a rule like "skip if attempted recently" gives one or two, sometimes none
        counts = checks_per_slot(span)
        for r, per_slot in counts.items():
            assert len(per_slot) >= 4 and set(per_slot) == {1}, (r, counts)

        replicas[0].kill()  # SIGKILL: its connections, and so its claims, die with it
        replicas[0].wait(timeout=10)
        counts = checks_per_slot(span)
        for r, per_slot in counts.items():
            assert len(per_slot) >= 4 and set(per_slot) == {1}, (r, counts)

        # an overwrite is recorded once, whichever replica sees it
        moved_to = pusher.image(repos[0], "1.0.0", seed="rebuilt")
        time.sleep(3 * INTERVAL)
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errs = [proc.communicate(timeout=30)[1] for proc in replicas]
    assert [p.returncode for p in replicas[1:]] == [0, 0], errs
    history = run(
        "history",
        f"{proxy.host}/{repos[0]}:1.0.0",
        "--json",
        env={"WATCHDOG_DATABASE_URL": pg_url},
        cwd=tmp_path,
    )
    kinds = [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)]
    assert kinds == [("first_seen", releases[repos[0]].digest), ("moved", moved_to.digest)], kinds
    other = run(
        "history",
        f"{proxy.host}/{repos[1]}:1.0.0",
        "--json",
        env={"WATCHDOG_DATABASE_URL": pg_url},
        cwd=tmp_path,
    )
    assert [e["kind"] for e in json.loads(other.stdout)] == ["first_seen"]
