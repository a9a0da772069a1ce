"""Incidents end to end: a real registry (htpasswd user ci-bot) notifies a real daemon, which
alerts a Slack stand-in in bot mode with buttons (issue 16's "done means").

A release overwrites two tags in each of three repositories of one namespace in one go. The
test checks that this is one top-level Slack message naming all six tags and ci-bot, that
Restore all puts all six back bit for bit and redraws the message, and that a seventh move
inside the window redraws the incident and is told in its thread instead of alerting again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from tests.support.slack_standin import TOKEN, SlackStandIn
from tests.web.test_slack import ALLOWED, SIGNING_SECRET, buttons_of, signed_headers, tap_body
from watchdog.alerts import incident as incident_view
from watchdog.registry import media

REPOS = ("acme/api", "acme/web", "acme/worker")
TAGS = ("0.15.0", "0.15")
HOOK_TOKEN = "hook-secret-for-tests"
ENV = {"SLACK_TOKEN": TOKEN, "SIGNING": SIGNING_SECRET}


def _notifying(port: int) -> str:
    return (
        "notifications:\n  endpoints:\n    - name: tag-watchdog\n"
        f"      url: http://127.0.0.1:{port}/hooks/registry\n"
        f"      headers:\n        Authorization: [Bearer {HOOK_TOKEN}]\n"
        "      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
        "      ignore:\n        actions: [pull]\n"
    )


def _config(path: Path, server: support_registry.RegistryServer, port: int, slack: str) -> None:
    watches = "".join(
        f"  - repository: {server.host}/{r}\n    tags: {{include: ['^\\d+\\.\\d+(\\.\\d+)?$']}}\n"
        for r in REPOS
    )
    path.write_text(
        f"database_url: sqlite:///{path.parent / 'w.db'}\ninterval: 1h\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\nhooks: {{registry_token: '{HOOK_TOKEN}'}}\n"
        f"registries: [{{host: '{server.host}', username: ci-bot, "
        f"password: '{server.password}'}}]\n"
        "incidents: {wait: 2s, window: 5m, update_interval: 2s}\n"
        "slack: {token: '${SLACK_TOKEN}', channel: '#releases', signing_secret: '${SIGNING}', "
        f"allowed_users: [{ALLOWED}], base_url: '{slack}'}}\n"
        f"watches:\n{watches}"
    )


def _top_level(standin: SlackStandIn) -> list[dict[str, Any]]:
    return [m for m in standin.posted if m["thread_ts"] is None]


def _as_shown(standin: SlackStandIn, ts: str) -> dict[str, Any]:
    """The message ``ts`` as Slack shows it now: its last chat.update, else as posted."""
    updates = [u.body for u in standin.updates if u.body.get("ts") == ts]
    if updates:
        return updates[-1]
    posts = [r.body for r in standin.delivered if r.path.endswith("chat.postMessage")]
    return next(body for body, m in zip(posts, standin.posted, strict=True) if m["ts"] == ts)


def _names_all(message: dict[str, Any], host: str) -> bool:
    text = json.dumps(message)
    return all(f"{host}/{r}:{t}" in text for r in REPOS for t in TAGS) and "ci-bot" in text


def _digest(server: support_registry.RegistryServer, repo: str, tag: str) -> str:
    resp = httpx.head(
        f"{server.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": media.ACCEPT, **server.push_auth(repo)},
    )
    return str(resp.headers.get("docker-content-digest"))


def _explain(standin: SlackStandIn, tmp_path: Path) -> str:
    """What Slack got and the daemon's log, for a failure message."""
    posted = "\n".join(f"{m['ts']} {m['thread_ts']} {m['text']}" for m in standin.posted)
    updates = "\n".join(str(u.body.get("text")) for u in standin.updates)
    log = (tmp_path / "daemon.log").read_text()[-6000:]
    return f"posted:\n{posted}\nupdates:\n{updates}\ndaemon log (end):\n{log}"


def _stop(daemon: subprocess.Popen[str], tmp_path: Path) -> str:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)
    return (tmp_path / "daemon.log").read_text()


def test_a_release_over_three_repositories_is_one_incident_restored_all_at_once(
    tmp_path: Path,
) -> None:
    if support_registry.find_binary() is None:
        pytest.skip("docker-registry is not installed")
    port = free_port()
    server = support_registry.RegistryServer(
        tmp_path / "registry", "basic", username="ci-bot", extra_config=_notifying(port)
    ).start()
    cfg = tmp_path / "c.yaml"
    daemon = None
    try:
        releases = {}
        with contextlib.ExitStack() as stack, SlackStandIn() as standin:
            _config(cfg, server, port, standin.base_url)
            log_file = stack.enter_context((tmp_path / "daemon.log").open("w"))
            daemon = start_daemon(cfg, tmp_path, ENV, log=log_file)
            wait_for(lambda: http_status(port, "/healthz") == 200, what="the daemon to listen")
            # released while the daemon listens: a notification the daemon missed would be
            # retried by the registry, in order, ahead of the overwrite's (and a check brought
            # forward by that backlog finds the overwrite before its notification names ci-bot)
            with images.Pusher(server.url, headers=server.push_auth(REPOS[0])) as pusher:
                for r in REPOS:
                    for t in TAGS:  # both tags of a release name one multi-arch index
                        releases[(r, t)] = pusher.index(r, t, seed=f"release-{r}")
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            wait_for(
                lambda: len(api.get("/api/v1/tags").json()["tags"]) == 6,
                what="the six releases recorded",
            )

            # the accidental re-release: six tags overwritten in one go, the registry notifying
            with images.Pusher(server.url, headers=server.push_auth(REPOS[0])) as pusher:
                for r in REPOS:
                    for t in TAGS:
                        pusher.index(r, t, seed=f"rebuilt-{r}")
            parent = wait_for(
                lambda: next(
                    (
                        m
                        for m in _top_level(standin)
                        if _names_all(_as_shown(standin, m["ts"]), server.host)
                    ),
                    None,
                ),
                what="one message naming all six tags and ci-bot",
                timeout=60,
                explain=lambda: _explain(standin, tmp_path),
            )
            assert len(_top_level(standin)) == 1
            shown = _as_shown(standin, parent["ts"])
            text = json.dumps(shown)
            assert "6 release tags moved" in text
            assert "linux/amd64" in text  # the platforms that changed
            assert "Pushed by:* `ci-bot`" in text

            # Restore all (the person confirmed it in Slack's dialog)
            restore_all = buttons_of(shown)[incident_view.ACTION_RESTORE_ALL]
            assert restore_all["confirm"]["confirm"]["text"] == "Restore all"
            tap = tap_body(restore_all, message_ts=parent["ts"])
            resp = api.post("/slack/actions", content=tap, headers=signed_headers(tap))
            assert resp.status_code == 200
            wait_for(
                lambda: all(
                    _digest(server, r, t) == releases[(r, t)].digest for r in REPOS for t in TAGS
                ),
                what="all six tags back at their releases",
                timeout=30,
            )
            # bit for bit: the tag serves the release's exact bytes
            for (r, t), release in releases.items():
                got = httpx.get(
                    f"{server.url}/v2/{r}/manifests/{t}",
                    headers={"Accept": media.ACCEPT, **server.push_auth(r)},
                )
                assert got.content == release.index.body
                for platform, child in release.children.items():  # every platform pullable
                    by_digest = httpx.get(
                        f"{server.url}/v2/{r}/manifests/{child.digest}",
                        headers={"Accept": media.ACCEPT, **server.push_auth(r)},
                    )
                    assert by_digest.content == child.body, platform
            # the tap's outcome, then (the restores joined the incident) the message as it
            # stands: the worker's redraw and the tap's may land in either order
            wait_for(
                lambda: any(
                    u.body["ts"] == parent["ts"] and "restored 6 of 6 tags" in json.dumps(u.body)
                    for u in standin.updates
                ),
                what="the message redrawn with the outcome",
            )
            settled = f"6 restored by <@{ALLOWED}> (alice): every tag settled"
            wait_for(
                lambda: settled in json.dumps(_as_shown(standin, parent["ts"])),
                what="the message showing every tag restored",
            )

            # a seventh move inside the window: the incident grows, no second alert
            with images.Pusher(server.url, headers=server.push_auth(REPOS[0])) as pusher:
                again = pusher.index(REPOS[0], TAGS[0], seed="rebuilt-again")

            def told() -> bool:  # a reply in the incident's thread shows the new digest
                posts = [r.body for r in standin.delivered if r.path.endswith("chat.postMessage")]
                return any(
                    m["thread_ts"] == parent["ts"] and again.digest[:19] in json.dumps(body)
                    for body, m in zip(posts, standin.posted, strict=True)
                )

            wait_for(told, what="the seventh move told in the incident's thread", timeout=30)
            wait_for(
                lambda: again.digest[:19] in json.dumps(_as_shown(standin, parent["ts"])),
                what="the incident's message redrawn with the seventh move",
            )
            # the tag's own button in the incident's message: only that tag, the message redrawn
            redrawn = _as_shown(standin, parent["ts"])
            (own,) = [
                b for a, b in buttons_of(redrawn).items() if a.startswith("tag_watchdog.restore.")
            ]
            assert json.loads(own["value"])["ref"] == f"{server.host}/{REPOS[0]}:{TAGS[0]}"
            tap = tap_body(own, message_ts=parent["ts"])
            assert api.post("/slack/actions", content=tap, headers=signed_headers(tap)).is_success
            wait_for(
                lambda: _digest(server, REPOS[0], TAGS[0]) == releases[(REPOS[0], TAGS[0])].digest,
                what="the tag back at its release",
            )
            wait_for(
                lambda: "Restore all" not in json.dumps(_as_shown(standin, parent["ts"])),
                what="the message redrawn with nothing left to restore",
            )
            assert len(_top_level(standin)) == 1
            assert all(m["thread_ts"] in (None, parent["ts"]) for m in standin.posted)
            metrics = api.get("/metrics").text
            assert f'tag_watchdog_incidents_total{{registry="{server.host}"}} 1.0' in metrics
            api.close()
    finally:
        err = _stop(daemon, tmp_path) if daemon is not None else ""
        server.close()
    assert daemon is not None and daemon.returncode == 0, err
    listed = run("incidents", "--json", "-c", str(cfg), cwd=tmp_path, env=ENV)
    assert listed.returncode == 0, listed.stderr
    (incident,) = json.loads(listed.stdout)
    assert len(incident["tags"]) == 6
