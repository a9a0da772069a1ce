"""The daemon SIGKILLed in the middle of a vault copy: nothing is recorded as kept, the copy stays
pending, and the next start (here: `scan`, which completes the copies of what it found) makes it.
One daemon and one scan: the cheapest run that proves it."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import httpx

from tests.support import faultproxy, ports
from tests.support.cli import run, start_daemon, wait_for


def test_sigkill_mid_copy_leaves_it_pending_and_the_next_start_completes_it(
    tmp_path: Path, registry, server, repo, pusher, make_fault_proxy
) -> None:
    pushed = pusher.index(repo, "0.15.0", seed="crash")
    proxy: faultproxy.FaultProxy = make_fault_proxy(server)  # the vault, on a second registry
    stuck = threading.Event()
    # a copy streaming, stuck mid-way: the chunk is taken (and logged) and never answered
    proxy.add("PATCH", r"/blobs/uploads/", action=lambda handler: stuck.wait(60))
    db = tmp_path / "w.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""database_url: sqlite:///{db}
interval: 1h
http: {{listen: "127.0.0.1:{ports.free_port()}"}}
registries:
  - {{host: "{registry.host}", insecure: true}}
  - {{host: "{proxy.host}", insecure: true}}
watches: ["{registry.host}/{repo}"]
vault: {{repository: "{proxy.host}/vault"}}
"""
    )
    daemon = start_daemon(cfg, tmp_path, log=(tmp_path / "daemon.log").open("w"))
    try:
        wait_for(lambda: proxy.count("PATCH", r"/blobs/uploads/"), what="a blob upload under way")
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        stuck.set()

    def copies() -> list[tuple[str, int, str | None]]:
        with sqlite3.connect(db) as conn:
            return list(conn.execute("SELECT state, attempts, vault_tag FROM vault_copies"))

    assert copies() == [("pending", 0, None)]  # nothing half-recorded
    vault_tag = "0.15.0--" + pushed.digest.removeprefix("sha256:")
    vault_repo = f"vault/{registry.host.replace(':', '-')}/{repo}"
    head = httpx.head(f"{server.url}/v2/{vault_repo}/manifests/{vault_tag}")
    assert head.status_code == 404

    proxy.reset()
    done = run("scan", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert copies() == [("kept", 1, vault_tag)]
    accept = "application/vnd.oci.image.index.v1+json"
    head = httpx.head(
        f"{server.url}/v2/{vault_repo}/manifests/{vault_tag}", headers={"Accept": accept}
    )
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == pushed.digest
    # and `status` says so, in its VAULT column
    status = run("status", "-c", str(cfg), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.splitlines()
    assert header.split()[-1] == "VAULT" and row.split()[-1] == "kept"
