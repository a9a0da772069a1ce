"""Harbor and Docker Hub webhooks: the parsers on their documented payload shapes, the endpoints'
authentication and validation through the HTTP app, and a real daemon told by each.

The fixtures below are written for these tests in the shapes Harbor and Docker Hub document
(Harbor: "Configure Webhook Notifications", Default and CloudEvents formats; Docker Hub:
"Webhooks", example payload), with made-up names, digests and times.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, run, start_daemon, wait_for
from tests.support.registry import free_port
from watchdog import config, errors, notifications
from watchdog.web import hooks

DIGEST = "sha256:" + "4" * 64


def harbor_default(
    kind: str = "PUSH_ARTIFACT",
    *,
    host: str = "harbor.example.com",
    full_name: str = "deephaven/server",
    tags: Sequence[str] = ("0.15.0",),
) -> dict[str, Any]:
    """Harbor's Default payload format: type, occur_at, operator, event_data."""
    namespace, _, name = full_name.partition("/")
    return {
        "type": kind,
        "occur_at": 1764355200,
        "operator": "release-bot",
        "event_data": {
            "resources": [
                {"digest": DIGEST, "tag": tag, "resource_url": f"{host}/{full_name}:{tag}"}
                for tag in tags
            ],
            "repository": {
                "date_created": 1764300000,
                "name": name,
                "namespace": namespace,
                "repo_full_name": full_name,
                "repo_type": "private",
            },
        },
    }


def harbor_cloudevents(
    kind: str = "harbor.artifact.pushed",
    *,
    host: str = "harbor.example.com",
    full_name: str = "deephaven/server",
    tag: str = "0.15.0",
) -> dict[str, Any]:
    """Harbor's CloudEvents payload format: the event data under ``data``."""
    namespace, _, name = full_name.partition("/")
    return {
        "specversion": "1.0",
        "id": "0b7c6c3e-5b1f-4f7e-9d44-1f1f3a2b9c01",
        "requestid": "8a1d2f0e-2222-4c4c-8888-0123456789ab",
        "source": "/projects/3/webhook/policies/7",
        "type": kind,
        "datacontenttype": "application/json",
        "time": "2026-11-28T19:00:00Z",
        "data": {
            "resources": [
                {"digest": DIGEST, "tag": tag, "resource_url": f"{host}/{full_name}:{tag}"}
            ],
            "repository": {
                "name": name,
                "namespace": namespace,
                "repo_full_name": full_name,
                "repo_type": "public",
            },
        },
        "operator": "release-bot",
    }


def dockerhub(repo_name: str = "deephaven/server", tag: str | None = "0.15.0") -> dict[str, Any]:
    """Docker Hub's repository webhook payload (it sends pushes only)."""
    namespace, _, name = repo_name.rpartition("/")
    push_data: dict[str, Any] = {"pushed_at": 1764355200, "pusher": "release-bot"}
    if tag is not None:
        push_data["tag"] = tag
    return {
        "callback_url": f"https://registry.hub.docker.com/u/{repo_name}/hook/0a1b2c3d4e5f/",
        "push_data": push_data,
        "repository": {
            "comment_count": 0,
            "date_created": 1764300000,
            "description": "",
            "dockerfile": "FROM scratch\n",
            "full_description": "The server",
            "is_official": False,
            "is_private": False,
            "is_trusted": False,
            "name": name,
            "namespace": namespace or "library",
            "owner": namespace or "library",
            "repo_name": repo_name,
            "repo_url": f"https://registry.hub.docker.com/u/{repo_name}/",
            "star_count": 0,
            "status": "Active",
        },
    }


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


Event = notifications.RegistryEvent


# --- Harbor ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            harbor_default(),
            [Event("push", "deephaven/server", "0.15.0", "harbor.example.com")],
        ),
        (
            harbor_cloudevents(),
            [Event("push", "deephaven/server", "0.15.0", "harbor.example.com")],
        ),
        (  # one artifact pushed with two tags: one event per tag
            harbor_default(tags=("0.15.0", "latest")),
            [
                Event("push", "deephaven/server", "0.15.0", "harbor.example.com"),
                Event("push", "deephaven/server", "latest", "harbor.example.com"),
            ],
        ),
        (  # the host keeps its port, and is lower-cased like every registry host
            harbor_default(host="Harbor.Internal:8443", full_name="team/app"),
            [Event("push", "team/app", "0.15.0", "harbor.internal:8443")],
        ),
        (  # a host without a dot is still the host: Harbor always writes it first
            harbor_default(host="harbor", full_name="team/app"),
            [Event("push", "team/app", "0.15.0", "harbor")],
        ),
        (
            harbor_default("DELETE_ARTIFACT"),
            [Event("delete", "deephaven/server", "0.15.0", "harbor.example.com")],
        ),
        (
            harbor_cloudevents("harbor.artifact.deleted"),
            [Event("delete", "deephaven/server", "0.15.0", "harbor.example.com")],
        ),
        # everything else Harbor sends is not about what a tag points at
        (harbor_default("PULL_ARTIFACT"), []),
        (harbor_default("SCANNING_COMPLETED"), []),
        (harbor_default("QUOTA_WARNING"), []),
        (harbor_default("REPLICATION"), []),
        (harbor_default("TAG_RETENTION"), []),
        (harbor_cloudevents("harbor.artifact.pulled"), []),
        (harbor_cloudevents("harbor.scan.completed"), []),
    ],
)
def test_harbor_payloads(doc: dict[str, Any], expected: list[Event]) -> None:
    assert notifications.parse_harbor(raw(doc)) == expected


def test_harbor_push_by_digest_has_no_tag() -> None:
    """A push by digest (a signature, an untagged child) names the digest where a tag would be:
    not a tag, so it triggers nothing."""
    doc = harbor_default()
    resource = doc["event_data"]["resources"][0]
    resource["tag"] = DIGEST
    resource["resource_url"] = f"harbor.example.com/deephaven/server@{DIGEST}"
    events = notifications.parse_harbor(raw(doc))
    assert events == [Event("push", "deephaven/server", None, "harbor.example.com")]
    assert notifications.watches_to_check(events, HARBOR_WATCHES) == []


def test_harbor_without_resources_and_by_namespace_and_name() -> None:
    doc = harbor_default("DELETE_ARTIFACT")
    del doc["event_data"]["resources"]
    del doc["event_data"]["repository"]["repo_full_name"]
    assert notifications.parse_harbor(raw(doc)) == [Event("delete", "deephaven/server", None, None)]


HARBOR_WATCHES = config.from_mapping(
    {"watches": ["harbor.example.com/deephaven/server", "harbor.internal:8443/deephaven/server"]},
    {},
).watches


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (harbor_default(), ["harbor.example.com/deephaven/server"]),
        (harbor_cloudevents(), ["harbor.example.com/deephaven/server"]),
        (harbor_default(host="harbor.internal:8443"), ["harbor.internal:8443/deephaven/server"]),
        (harbor_default(tags=("latest",)), []),  # not a release tag
        (harbor_default(full_name="other/repo"), []),
        (harbor_default("PULL_ARTIFACT"), []),
        (harbor_default("DELETE_ARTIFACT"), ["harbor.example.com/deephaven/server"]),
    ],
)
def test_harbor_watches_to_check(doc: dict[str, Any], expected: list[str]) -> None:
    events = notifications.parse_harbor(raw(doc))
    assert [w.name for w in notifications.watches_to_check(events, HARBOR_WATCHES)] == expected


def _without(doc: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "Harbor webhook body is not JSON"),
        (b"\xff\xfe", "Harbor webhook body is not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"events": []}', "expected a Harbor webhook payload"),
        (raw(_without(harbor_default(), "event_data")), "without an event_data object"),
        (raw(_without(harbor_cloudevents(), "data")), "without an data object"),
        (
            raw(_without(harbor_default(), "event_data", "repository")),
            "without repository.repo_full_name",
        ),
        (b" " * (notifications.MAX_BODY_BYTES + 1), "over"),
        (
            raw(harbor_default(tags=[f"1.0.{i}" for i in range(1001)])),
            "more than 1000 resources",
        ),
    ],
)
def test_bad_harbor_payloads_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(errors.UsageError, match=message):
        notifications.parse_harbor(body)


# --- Docker Hub ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (dockerhub(), [Event("push", "deephaven/server", "0.15.0", "docker.io")]),
        # an official image's short name is library/<name>, as Docker names it
        (dockerhub("nginx", "1.27.0"), [Event("push", "library/nginx", "1.27.0", "docker.io")]),
        # old automated-build payloads carry no tag: nothing to check
        (dockerhub(tag=None), [Event("push", "deephaven/server", None, "docker.io")]),
        (dockerhub(tag="not a tag!"), [Event("push", "deephaven/server", None, "docker.io")]),
    ],
)
def test_dockerhub_payloads(doc: dict[str, Any], expected: list[Event]) -> None:
    assert notifications.parse_dockerhub(raw(doc)) == expected


DOCKERHUB_WATCHES = config.from_mapping(
    {"watches": ["deephaven/server", "ghcr.io/deephaven/server", "nginx"]}, {}
).watches


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        # docker.io is the host: the ghcr.io watch of the same path is not checked
        (dockerhub(), ["docker.io/deephaven/server"]),
        (dockerhub("nginx", "1.27.0"), ["docker.io/library/nginx"]),
        (dockerhub(tag="latest"), []),
        (dockerhub(tag=None), []),
        (dockerhub("someone/else"), []),
    ],
)
def test_dockerhub_watches_to_check(doc: dict[str, Any], expected: list[str]) -> None:
    events = notifications.parse_dockerhub(raw(doc))
    assert [w.name for w in notifications.watches_to_check(events, DOCKERHUB_WATCHES)] == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "Docker Hub webhook body is not JSON"),
        (b'"x"', "not a JSON object"),
        (raw(harbor_default()), "expected a Docker Hub webhook payload"),
        (raw(_without(dockerhub(), "push_data")), "expected a Docker Hub webhook payload"),
        (raw(_without(dockerhub(), "repository", "repo_name")), "without repository.repo_name"),
        (raw(dockerhub("Bad/UPPER")), "repository.repo_name"),
        (raw(dockerhub("a/../b")), "repository.repo_name"),
    ],
)
def test_bad_dockerhub_payloads_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(errors.UsageError, match=message):
        notifications.parse_dockerhub(body)


# --- the endpoints (web.hooks) -------------------------------------------------------------------

TOKEN = "hook-MARKER-registry-token"
HUB_TOKEN = "hook-MARKER-dockerhub-token"


def _our_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What the watchdog logged (the test's own httpx client logs the URLs it calls)."""
    return "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    )


class Sink:
    """Stands in for the daemon: records the events and answers which watches it would check."""

    def __init__(self, watches: Sequence[config.WatchSettings]) -> None:
        self.watches = watches
        self.calls: list[list[Event]] = []

    async def __call__(self, events: Sequence[Event]) -> list[str]:
        self.calls.append(list(events))
        return [w.name for w in notifications.watches_to_check(events, self.watches)]


def _client(
    sink: Sink, *, hook: str | None = TOKEN, hub: str | None = HUB_TOKEN
) -> httpx.AsyncClient:
    app = Starlette(
        routes=hooks.routes(
            config.Secret(hook) if hook else None, config.Secret(hub) if hub else None, sink
        )
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_harbor_hook_takes_the_bearer_token_from_the_policy_auth_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(HARBOR_WATCHES)
    caplog.set_level(logging.DEBUG)
    async with _client(sink) as client:
        ok = await client.post(
            "/hooks/harbor",
            content=raw(harbor_default()),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        cloud = await client.post(
            "/hooks/harbor",
            content=raw(harbor_cloudevents()),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/cloudevents+json",
            },
        )
        ignored = await client.post(
            "/hooks/harbor",
            content=raw(harbor_default("PULL_ARTIFACT")),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        refused = [
            await client.post("/hooks/harbor", content=raw(harbor_default()), headers=headers)
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": TOKEN},  # auth_header without "Bearer "
                {"Authorization": f"Bearer {HUB_TOKEN}"},  # the other hook's token
            )
        ]
        by_query = await client.post(f"/hooks/harbor?token={TOKEN}", content=raw(harbor_default()))
    assert ok.status_code == 200
    assert ok.json() == {"events": 1, "checks_triggered": ["harbor.example.com/deephaven/server"]}
    assert cloud.json()["checks_triggered"] == ["harbor.example.com/deephaven/server"]
    assert ignored.json() == {"events": 0, "checks_triggered": []}
    assert [r.status_code for r in refused] == [401, 401, 401, 401]
    assert "auth_header" in refused[0].json()["error"]
    assert by_query.status_code == 401  # a header-capable sender never puts the token in a URL
    assert len(sink.calls) == 3  # refused requests reach nothing
    ours = _our_logs(caplog)
    assert "hook_refused reason=bad_token source=harbor" in ours
    assert TOKEN not in ours and HUB_TOKEN not in ours


async def test_dockerhub_hook_takes_the_token_in_the_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Sink(DOCKERHUB_WATCHES)
    caplog.set_level(logging.DEBUG)
    async with _client(sink) as client:
        ok = await client.post(f"/hooks/dockerhub?token={HUB_TOKEN}", content=raw(dockerhub()))
        refused = [
            await client.post(url, content=raw(dockerhub()), headers=headers)
            for url, headers in (
                ("/hooks/dockerhub", {}),
                ("/hooks/dockerhub?token=wrong", {}),
                (f"/hooks/dockerhub?token={HUB_TOKEN[:-1]}", {}),
                (f"/hooks/dockerhub?token={HUB_TOKEN}&token={HUB_TOKEN}", {}),
                ("/hooks/dockerhub?token=%C3%A9t%C3%A9", {}),  # non-ASCII: refused, no crash
                (f"/hooks/dockerhub?token={TOKEN}", {}),  # the other hook's token
                ("/hooks/dockerhub", {"Authorization": f"Bearer {HUB_TOKEN}"}),
            )
        ]
    assert ok.status_code == 200
    assert ok.json() == {"events": 1, "checks_triggered": ["docker.io/deephaven/server"]}
    assert [r.status_code for r in refused] == [401] * 7
    assert "?token=" in refused[0].json()["error"]
    assert len(sink.calls) == 1
    ours = _our_logs(caplog)
    assert ours.count("hook_refused reason=bad_token source=dockerhub") == 7
    assert HUB_TOKEN not in ours and TOKEN not in ours


async def test_hooks_without_their_token_configured_are_refused() -> None:
    sink = Sink(HARBOR_WATCHES)
    async with _client(sink, hook=None, hub=None) as client:
        harbor = await client.post("/hooks/harbor", content=raw(harbor_default()))
        hub = await client.post("/hooks/dockerhub?token=", content=raw(dockerhub()))
        registry = await client.post("/hooks/registry", content=b'{"events": []}')
    assert (harbor.status_code, harbor.json()) == (
        403,
        {"error": "hooks.registry_token is not configured"},
    )
    assert (hub.status_code, hub.json()) == (
        403,
        {"error": "hooks.dockerhub_token is not configured"},
    )
    assert registry.status_code == 403
    assert sink.calls == []


async def test_hook_bodies_are_validated() -> None:
    sink = Sink(HARBOR_WATCHES)
    harbor_auth = {"Authorization": f"Bearer {TOKEN}"}
    hub_url = f"/hooks/dockerhub?token={HUB_TOKEN}"
    big = b"{" + b" " * notifications.MAX_BODY_BYTES + b"}"
    async with _client(sink) as client:
        answers = {
            "harbor not json": await client.post(
                "/hooks/harbor", content=b"{oops", headers=harbor_auth
            ),
            "harbor another shape": await client.post(
                "/hooks/harbor", content=raw(dockerhub()), headers=harbor_auth
            ),
            "harbor too large": await client.post(
                "/hooks/harbor", content=big, headers=harbor_auth
            ),
            "hub not json": await client.post(hub_url, content=b"\xff"),
            "hub another shape": await client.post(hub_url, content=raw(harbor_default())),
            "hub too large": await client.post(hub_url, content=big),
        }
        get = await client.get(hub_url)
    statuses = {k: v.status_code for k, v in answers.items()}
    assert statuses == {
        "harbor not json": 400,
        "harbor another shape": 400,
        "harbor too large": 413,
        "hub not json": 400,
        "hub another shape": 400,
        "hub too large": 413,
    }
    assert answers["harbor not json"].json() == {"error": "Harbor webhook body is not JSON"}
    assert "expected a Docker Hub webhook payload" in answers["hub another shape"].json()["error"]
    assert get.status_code == 405
    assert sink.calls == []


# --- a real daemon told by Harbor and Docker Hub -------------------------------------------------


def _moves(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    for line in text.splitlines():
        if line.startswith("tag_watchdog_tag_moves_total{") and f'repository="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return -1.0


def test_a_daemon_told_by_harbor_and_docker_hub_checks_at_once_and_fakes_nothing(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """A one-hour poll, so only a hook explains a prompt check. A Harbor notification for the
    real registry's overwritten release has it recorded at once; a Docker Hub notification
    triggers a check of the docker.io watch (unreachable here: it fails) and records nothing."""
    release = pusher.image(repo, "1.0.0", seed="a")
    port = free_port()
    hub_repo = "tagwatchdog-test/app"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1h\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}'}}\n"
        f"hooks: {{registry_token: '{TOKEN}', dockerhub_token: '{HUB_TOKEN}'}}\n"
        f"watches: ['{registry.host}/{repo}', 'docker.io/{hub_repo}']\n"
    )
    name = f"{registry.host}/{repo}"
    log = (tmp_path / "daemon.log").open("w+")
    daemon = start_daemon(cfg, tmp_path, log=log)
    try:
        wait_for(lambda: http_status(port) == 200, what="the daemon's first checks")
        moved = pusher.image(repo, "1.0.0", seed="overwritten")
        harbor = httpx.post(
            f"http://127.0.0.1:{port}/hooks/harbor",
            content=raw(harbor_default(host=registry.host, full_name=repo, tags=("1.0.0",))),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert harbor.json() == {"events": 1, "checks_triggered": [name]}
        wait_for(lambda: _moves(port, name) >= 1, timeout=10, what="the move, told by Harbor")
        hub = httpx.post(
            f"http://127.0.0.1:{port}/hooks/dockerhub?token={HUB_TOKEN}",
            content=raw(dockerhub(hub_repo, "1.0.0")),
            timeout=10,
        )
        assert hub.json() == {"events": 1, "checks_triggered": [f"docker.io/{hub_repo}"]}
        # the check it asked for (and the second look a moment later) ran, and failed: docker.io
        # is out of reach here. Wait for both before stopping, so no check is cut short.
        wait_for(
            lambda: (
                (tmp_path / "daemon.log")
                .read_text()
                .count(f"check_failed repository=docker.io/{hub_repo}")
                >= 3
            ),
            what="the checks Docker Hub asked for",
        )
        forged = httpx.post(
            f"http://127.0.0.1:{port}/hooks/dockerhub?token=guess",
            content=raw(dockerhub(hub_repo, "1.0.0")),
            timeout=10,
        )
        assert forged.status_code == 401
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.seek(0)
        err = log.read()
        log.close()
    assert daemon.returncode == 0, err
    assert "Traceback" not in err
    assert "hook_refused reason=bad_token source=dockerhub" in err
    assert TOKEN not in err and HUB_TOKEN not in err  # never logged, not even in a URL
    history = run("history", f"{name}:1.0.0", "--json", "-c", str(cfg), cwd=tmp_path)
    assert [(e["kind"], e["new_digest"]) for e in json.loads(history.stdout)] == [
        ("first_seen", release.digest),
        ("moved", moved.digest),
    ]
    status = run("status", "--json", "-c", str(cfg), cwd=tmp_path)
    assert hub_repo not in status.stdout  # a notification never records anything by itself


DEEP = b"[" * 200_000 + b"]" * 200_000  # under the 1 MiB limit, too deep for json.loads


@pytest.mark.parametrize(
    "parse", [notifications.parse, notifications.parse_harbor, notifications.parse_dockerhub]
)
def test_json_nested_too_deep_is_a_usage_error_not_a_crash(parse: Any) -> None:
    with pytest.raises(errors.UsageError, match="not JSON"):
        parse(DEEP)
