"""Registry push notifications: parsing, matching, and a real registry notifying a real daemon."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from watchdog import config, errors, notifications


def event(
    action: str, repository: str, tag: str | None = None, host: str | None = None
) -> dict[str, Any]:
    target: dict[str, Any] = {
        "repository": repository,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": "sha256:" + "a" * 64,
    }
    if tag is not None:
        target["tag"] = tag
    out: dict[str, Any] = {"id": "x", "action": action, "target": target}
    if host is not None:
        out["request"] = {"host": host, "method": "PUT"}
    return out


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


WATCHES = config.from_mapping(
    {"watches": ["ghcr.io/deephaven/server", "localhost:5000/deephaven/server", "quay.io/x/y"]}, {}
).watches


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([event("push", "x/y", "1.0.0")], ["quay.io/x/y"]),
        ([event("push", "x/y")], []),  # a blob or untagged manifest push
        ([event("push", "x/y", "latest")], []),  # not a release tag of this watch
        ([event("pull", "x/y", "1.0.0")], []),  # our own HEADs cause these
        ([event("delete", "x/y")], ["quay.io/x/y"]),
        ([event("push", "other/repo", "1.0.0")], []),
        (
            [event("push", "deephaven/server", "0.15.0", host="ghcr.io")],
            ["ghcr.io/deephaven/server"],
        ),
        (
            [event("push", "deephaven/server", "0.15.0", host="registry.internal:5000")],
            ["ghcr.io/deephaven/server", "localhost:5000/deephaven/server"],
        ),
        ([event("push", "x/y", "1.0.0"), event("push", "x/y", "1.0.1")], ["quay.io/x/y"]),
    ],
)
def test_watches_to_check(events: list[dict[str, Any]], expected: list[str]) -> None:
    parsed = notifications.parse(body(*events))
    assert [w.name for w in notifications.watches_to_check(parsed, WATCHES)] == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"events": 3}',
        b'{"nothing": []}',
        b"\xff\xfe",
        json.dumps({"events": [{}] * 1001}).encode(),
    ],
)
def test_bad_envelopes_are_refused(raw: bytes) -> None:
    with pytest.raises(errors.UsageError):
        notifications.parse(raw)


def test_junk_events_are_skipped() -> None:
    parsed = notifications.parse(
        body({"action": 1}, {"target": "x"}, event("push", "x/y", "bad tag!"))
    )
    assert parsed == [notifications.RegistryEvent("push", "x/y", None, None)]


def _moves(port: int, name: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return -1.0
    for line in text.splitlines():
        if line.startswith("tag_watchdog_tag_moves_total{") and f'repository="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def test_a_real_registry_notifies_the_daemon_which_checks_at_once(tmp_path: Path) -> None:
    if support_registry.find_binary() is None:
        pytest.skip("docker-registry is not installed")
    token = "hook-secret-for-tests"
    port = free_port()
    extra = (
        "notifications:\n"
        "  endpoints:\n"
        "    - name: tag-watchdog\n"
        f"      url: http://127.0.0.1:{port}/hooks/registry\n"
        "      headers:\n"
        f"        Authorization: [Bearer {token}]\n"
        "      timeout: 2s\n"
        "      threshold: 3\n"
        "      backoff: 1s\n"
        "      ignore:\n"
        "        actions: [pull]\n"
    )
    # htpasswd user ci-bot: the registry names it as the actor of every push it notifies
    server = support_registry.RegistryServer(
        tmp_path / "registry", "basic", username="ci-bot", extra_config=extra
    ).start()
    auth = server.push_auth("deephaven/server")
    daemon = None
    try:
        cfg = tmp_path / "c.yaml"
        # a one-hour poll: only a notification can explain a prompt detection
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1h\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\nhooks: {{registry_token: '{token}'}}\n"
            f"registries: [{{host: '{server.host}', username: ci-bot,"
            f" password: '{server.password}'}}]\n"
            f"watches: ['{server.host}/deephaven/server']\n"
        )
        daemon = start_daemon(cfg, tmp_path)
        name = f"{server.host}/deephaven/server"
        wait_for(lambda: http_status(port, "/healthz") == 200, what="the daemon to listen")
        # released while the daemon listens (a notification it missed would be retried by the
        # registry ahead of the overwrite's, and bring a check forward before the overwrite's
        # notification named the pusher); the notification records the baseline
        with images.Pusher(server.url, headers=auth) as pusher:
            release = pusher.index("deephaven/server", "0.15.0", seed="release")
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/api/v1/tags", timeout=3).json()["tags"],
            what="the release recorded",
        )
        assert _moves(port, name) == 0.0
        # a forged notification is refused and triggers nothing
        forged = httpx.post(
            f"http://127.0.0.1:{port}/hooks/registry",
            content=body(event("push", "deephaven/server", "0.15.0")),
            headers={"Authorization": "Bearer wrong", "Content-Type": notifications.MEDIA_TYPE},
        )
        assert forged.status_code == 401
        # the accidental re-release: the registry tells the daemon, which checks at once
        with images.Pusher(server.url, headers=auth) as pusher:
            rebuilt = pusher.index("deephaven/server", "0.15.0", seed="rebuild")
        pushed = time.monotonic()
        while _moves(port, name) < 1:
            assert time.monotonic() - pushed < 15, (
                "the move was not seen: the notification did not arrive"
            )
            time.sleep(0.05)
        latency = time.monotonic() - pushed
        assert latency < 10
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        server.close()
    assert daemon.returncode == 0, err
    assert "check_triggered" in err and "hook_refused reason=bad_token" in err
    history = run(
        "history", f"{server.host}/deephaven/server:0.15.0", "--json", "-c", str(cfg), cwd=tmp_path
    )
    moved = [e for e in json.loads(history.stdout) if e["kind"] == "moved"]
    assert len(moved) == 1
    assert (moved[0]["old_digest"], moved[0]["new_digest"]) == (release.digest, rebuilt.digest)
    # who pushed, as the registry's notification said: the htpasswd user and its client
    pushed_by = moved[0]["detail"]["pushed_by"]
    assert pushed_by["actor"] == "ci-bot" and pushed_by["source"] == "registry"
    assert pushed_by["user_agent"].startswith("python-httpx/")  # tests.support.images pushes
    assert pushed_by["address"].startswith("127.0.0.1")
    table = run("history", f"{name}:0.15.0", "-c", str(cfg), cwd=tmp_path)
    assert "pushed:ci-bot" in table.stdout


def test_a_lost_notification_is_caught_by_the_next_poll(tmp_path: Path) -> None:
    """The registry notifies an endpoint that is down: the overwrite is still seen by polling."""
    token = "hook-secret-for-tests"
    dead = free_port()  # nothing listens here: every notification is lost
    extra = (
        "notifications:\n  endpoints:\n    - name: tag-watchdog\n"
        f"      url: http://127.0.0.1:{dead}/hooks/registry\n"
        f"      headers:\n        Authorization: [Bearer {token}]\n"
        "      timeout: 1s\n      threshold: 3\n      backoff: 1s\n"
    )
    server = support_registry.RegistryServer(
        tmp_path / "registry", "open", extra_config=extra
    ).start()
    port = free_port()
    daemon = None
    try:
        with images.Pusher(server.url) as pusher:
            pusher.index("deephaven/server", "0.15.0", seed="release")
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 2s\njitter: 0s\n"
            f"http: {{listen: '127.0.0.1:{port}'}}\nhooks: {{registry_token: '{token}'}}\n"
            f"watches: ['{server.host}/deephaven/server']\n"
        )
        daemon = start_daemon(cfg, tmp_path)
        name = f"{server.host}/deephaven/server"
        wait_for(lambda: http_status(port) == 200, what="the daemon's first check")
        with images.Pusher(server.url) as pusher:
            pusher.index("deephaven/server", "0.15.0", seed="rebuild")
        wait_for(lambda: _moves(port, name) >= 1, timeout=15, what="the next poll to see the move")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
        server.close()
    assert daemon.returncode == 0, err
    assert "check_triggered" not in err  # no notification arrived: the poll found it


# --- who pushed ---------------------------------------------------------------------------------

DIGEST_A, DIGEST_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_distribution_events_name_the_pusher_and_the_digest() -> None:
    raw = event("push", "deephaven/server", "0.15.0", host="ghcr.io")
    raw["actor"] = {"name": "ci-bot"}
    raw["request"].update({"addr": "10.1.2.3:51234", "useragent": "docker/27.1 go/go1.22"})
    (parsed,) = notifications.parse(body(raw))
    assert parsed.pusher == notifications.Pusher(
        "registry", "ci-bot", "10.1.2.3:51234", "docker/27.1 go/go1.22"
    )
    assert parsed.digest == DIGEST_A
    # without an actor, address or agent there is no pusher (an anonymous push says nothing)
    (anonymous,) = notifications.parse(body(event("push", "deephaven/server", "0.15.0")))
    assert anonymous.pusher is None


def test_pusher_text_is_bounded_and_printable() -> None:
    raw = event("push", "a/b", "1.0.0")
    raw["actor"] = {"name": "evil\x1b[2J\nbot" + "x" * 500}
    raw["request"] = {"useragent": 42, "addr": "\u202e10.0.0.1"}
    (parsed,) = notifications.parse(body(raw))
    assert parsed.pusher is not None
    actor = parsed.pusher.actor or ""
    assert actor.startswith("evil[2Jbot") and len(actor) == notifications.MAX_PUSHER_FIELD
    assert parsed.pusher.user_agent is None  # not a string: dropped
    assert parsed.pusher.address == "10.0.0.1"  # the bidi override is not printable


def test_harbor_and_docker_hub_name_the_pusher() -> None:
    harbor = {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1,
        "operator": "release-robot",
        "event_data": {
            "resources": [
                {"tag": "0.15.0", "digest": DIGEST_B, "resource_url": "h.example/team/app:0.15.0"}
            ],
            "repository": {"repo_full_name": "team/app"},
        },
    }
    (h,) = notifications.parse_harbor(json.dumps(harbor).encode())
    assert h.pusher == notifications.Pusher("harbor", "release-robot")
    assert h.digest == DIGEST_B
    cloud = {
        "specversion": "1.0",
        "type": "harbor.artifact.pushed",
        "operator": "alice",
        "data": {"resources": [], "repository": {"repo_full_name": "team/app"}},
    }
    (c,) = notifications.parse_harbor(json.dumps(cloud).encode())
    assert c.pusher == notifications.Pusher("harbor", "alice")
    hub = {"push_data": {"tag": "1.0.0", "pusher": "bob"}, "repository": {"repo_name": "o/app"}}
    (d,) = notifications.parse_dockerhub(json.dumps(hub).encode())
    assert d.pusher == notifications.Pusher("dockerhub", "bob") and d.digest is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pushed(
    action: str, tag: str | None, who: str, digest: str | None = None, host: str | None = "r"
) -> notifications.RegistryEvent:
    return notifications.RegistryEvent(
        action, "team/app", tag, host, pusher=notifications.Pusher("registry", who), digest=digest
    )


def test_ledger_attributes_a_move_to_the_push_of_that_digest() -> None:
    clock = FakeClock()
    ledger = notifications.PushLedger(window=600, clock=clock)
    ledger.note([pushed("push", "0.15.0", "alice", DIGEST_A)])
    clock.now += 5
    ledger.note([pushed("push", "0.15.0", "bob", DIGEST_B)])
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_A) == notifications.Pusher(
        "registry", "alice"
    )
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_B) == notifications.Pusher(
        "registry", "bob"
    )
    # a digest no notification named: nobody is blamed
    assert ledger.who("r", "team/app", "0.15.0", "sha256:" + "c" * 64) is None
    assert ledger.who("r", "team/app", "1.0.0", DIGEST_A) is None  # another tag
    assert ledger.who("other", "team/app", "0.15.0", DIGEST_A) is None  # another host
    clock.now += 601
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_B) is None  # outside the window


def test_ledger_host_less_notifications_and_digest_less_ones_match() -> None:
    ledger = notifications.PushLedger()
    ledger.note([pushed("push", "1.0.0", "hub-user", None, host=None)])
    assert ledger.who("docker.io", "team/app", "1.0.0", DIGEST_A) == notifications.Pusher(
        "registry", "hub-user"
    )


def test_ledger_finds_a_delete_by_digest_and_ignores_pushes_for_deletions() -> None:
    ledger = notifications.PushLedger()
    ledger.note([pushed("push", "0.15.0", "alice", DIGEST_A)])
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_A, deleted=True) is None
    ledger.note([pushed("delete", None, "janitor", DIGEST_A)])  # distribution: by digest, no tag
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_A, deleted=True) == notifications.Pusher(
        "registry", "janitor"
    )
    assert ledger.who("r", "team/app", "0.15.0", DIGEST_B, deleted=True) is None


def test_ledger_is_bounded() -> None:
    ledger = notifications.PushLedger(size=100)
    ledger.note(pushed("push", f"1.0.{i}", "bot", DIGEST_A) for i in range(1000))
    assert len(ledger._pushes) == 100
    assert ledger.who("r", "team/app", "1.0.999", DIGEST_A) is not None
    assert ledger.who("r", "team/app", "1.0.0", DIGEST_A) is None  # the oldest went first
