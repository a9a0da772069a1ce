"""`make demo`: the story behind tag-watchdog, replayed offline in about a minute.

A local registry (Debian's docker-registry) gets a multi-arch release `0.15.0`; tag-watchdog watches
it with `on_move: restore` and a Slack stand-in; then the tag is overwritten the way the accidental
re-release did it. The terminal shows the watchdog catching the move, the alert it sends, and the
release put back, bit for bit. Everything runs on 127.0.0.1 and is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import images  # noqa: E402
from tests.support import registry as support_registry  # noqa: E402
from tests.support.slack_standin import SlackStandIn  # noqa: E402
from watchdog.registry import media  # noqa: E402

BOLD, DIM, GREEN, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = RED = RESET = ""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"{RED}demo failed: timed out waiting for {what}{RESET}")


def tag_digest(base: str, repo: str, tag: str) -> str | None:
    resp = httpx.head(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": media.ACCEPT})
    return resp.headers.get("docker-content-digest") if resp.status_code == 200 else None


def main() -> int:
    if support_registry.find_binary() is None:
        print(
            "make demo needs Debian's docker-registry: sudo apt-get install docker-registry",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="tag-watchdog-demo-"))
    server = slack = daemon = None
    try:
        say("a local registry and a Slack stand-in, on 127.0.0.1")
        server = support_registry.RegistryServer(work / "registry", "open").start()
        slack = SlackStandIn().start()
        repo = "deephaven/server"
        print(f"registry {server.host}, Slack webhook stand-in {slack.webhook_url}")

        say("release 0.15.0: a multi-arch image (linux/amd64 + linux/arm64)")
        with images.Pusher(server.url) as pusher:
            release = pusher.index(repo, "0.15.0", seed="release-0.15.0")
        print(f"{server.host}/{repo}:0.15.0 -> {GREEN}{release.digest}{RESET}")

        say("tag-watchdog runs with on_move: restore")
        port = free_port()
        config = work / "config.yaml"
        config.write_text(
            textwrap.dedent(f"""\
            database_url: sqlite:///{work / "watchdog.db"}
            interval: 2s
            jitter: 0s
            http: {{listen: "127.0.0.1:{port}"}}
            watches:
              - repository: {server.host}/{repo}
                on_move: restore
            slack: {{webhook_url: "{slack.webhook_url}"}}
            incidents: {{window: 5s, update_interval: 1s}}   # short for the demo (default 2m, 10s)
            """)
        )
        print(config.read_text().rstrip())
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        log_path = work / "daemon.log"
        daemon = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "run", "-c", str(config)],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("w"),
        )

        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait(ready, 30, "the watchdog to record the release")
        print(f"{DIM}" + log_path.read_text().strip().splitlines()[-1] + f"{RESET}")

        say("the accident: CI re-runs the release from an old branch and overwrites 0.15.0")
        with images.Pusher(server.url) as pusher:
            rebuilt = pusher.index(repo, "0.15.0", seed="accidental-rebuild")
        print(f"{server.host}/{repo}:0.15.0 -> {RED}{rebuilt.digest}{RESET}  (overwritten)")
        overwritten_at = time.monotonic()

        say("the watchdog catches the move, alerts, and puts the release back")
        wait(
            lambda: (
                tag_digest(server.url, repo, "0.15.0") == release.digest
                and any("restored" in m.get("text", "") for m in slack.messages())
            ),
            60,
            "the restore",
        )
        took = time.monotonic() - overwritten_at
        for line in log_path.read_text().splitlines():
            if any(k in line for k in ("tag_moved", "tag_restored", "restore", "alert_delivered")):
                print(f"{DIM}{line}{RESET}")

        say("the alert Slack received (plain-text fallback of the Block Kit message)")
        for message in slack.messages():
            print(textwrap.indent(message.get("text", json.dumps(message))[:1500], "  | "))

        say("verified")
        body = httpx.get(
            f"{server.url}/v2/{repo}/manifests/0.15.0", headers={"Accept": media.ACCEPT}
        ).content
        same = body == release.index.body
        children = all(
            httpx.head(
                f"{server.url}/v2/{repo}/manifests/{c.digest}", headers={"Accept": media.ACCEPT}
            ).status_code
            == 200
            for c in release.children.values()
        )
        print(
            f"0.15.0 answers {GREEN}{tag_digest(server.url, repo, '0.15.0')}{RESET} again, "
            f"{took:.1f} s after the overwrite"
        )
        print(
            f"bytes fetched by tag identical to the original release: {same}; "
            f"platform manifests present: {children}"
        )
        history = subprocess.run(
            [
                sys.executable,
                "-m",
                "watchdog",
                "history",
                f"{server.host}/{repo}:0.15.0",
                "-c",
                str(config),
            ],
            capture_output=True,
            text=True,
            cwd=work,
            env=env,
        )
        print(history.stdout.rstrip())
        return 0 if same and children else 1
    finally:
        say("cleaning up")
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        if slack is not None:
            slack.stop()
        if server is not None:
            server.close()
        shutil.rmtree(work, ignore_errors=True)
        print("done")


if __name__ == "__main__":
    sys.exit(main())
