"""HTTP API v1: a real daemon, a real registry; auth rules; the OpenAPI document matches the routes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import openapi_spec_validator
import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import http_status, start_daemon, wait_for
from tests.support.registry import free_port
from watchdog import config, models
from watchdog.registry import media
from watchdog.store import repo
from watchdog.web import api

TOKEN = "api-token-for-tests"


def test_openapi_document_is_valid_and_matches_the_routes() -> None:
    openapi_spec_validator.validate(api.OPENAPI)
    routes = api.routes(None, None, None)  # type: ignore[arg-type]
    served = {(r.path, m.lower()) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    documented = {(p, m) for p, ops in api.OPENAPI["paths"].items() for m in ops}
    assert served == documented


class NoActions:
    async def plan(self, *args: Any) -> Any:
        raise AssertionError("must not be called")

    async def restore(self, *args: Any) -> Any:
        raise AssertionError("must not be called")

    async def accept(self, *args: Any) -> Any:
        raise AssertionError("must not be called")


async def test_auth_rules(store: repo.Store) -> None:
    from starlette.applications import Starlette

    def client(token: config.Secret | None, host: str) -> httpx.AsyncClient:
        app = Starlette(routes=api.routes(store, token, NoActions()))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://watchdog")

    body = {"ref": "ghcr.io/deephaven/server:0.15.0"}
    async with client(None, "127.0.0.1") as c:
        assert (await c.get("/api/v1/tags")).json() == {"tags": []}  # loopback reads are open
        no_writes = await c.post("/api/v1/restore", json=body)
        assert no_writes.status_code == 403 and "http.api_token" in no_writes.json()["error"]
    secret = config.Secret(TOKEN)
    async with client(secret, "127.0.0.1") as c:
        assert (await c.post("/api/v1/restore", json=body)).status_code == 401
        wrong = await c.post("/api/v1/accept", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    async with client(secret, "10.1.2.3") as c:
        assert (await c.get("/api/v1/tags")).status_code == 401  # not loopback: token needed
        ok = await c.get("/api/v1/tags", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert (await c.get("/api/v1/openapi.json")).json() == api.OPENAPI
    async with client(secret, "127.0.0.1") as c:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for bad, fragment in [
            ({}, "ref is required"),
            ({"ref": "ghcr.io/a/b"}, "with a tag"),
            ({"ref": "ghcr.io/a/b:1.0.0", "digest": "sha256:short"}, "not a sha256 digest"),
            ({"ref": "ghcr.io/a/b:1.0.0", "dry_run": "yes"}, "dry_run"),
        ]:
            resp = await c.post("/api/v1/restore", json=bad, headers=auth)
            assert resp.status_code == 400 and fragment in resp.json()["error"], (bad, resp.text)
        raw = await c.post("/api/v1/restore", content=b"{not json", headers=auth)
        assert raw.status_code == 400
        state = await c.get("/api/v1/tags", params={"state": "weird"})
        assert state.status_code == 400


def test_api_against_a_real_daemon(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1s\njitter: 0s\n"
        f"http: {{listen: '127.0.0.1:{port}', api_token: '${{TOKEN}}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    daemon = start_daemon(cfg, tmp_path, {"TOKEN": TOKEN})
    ref = f"{registry.host}/{repo}:0.15.0"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_for(lambda: http_status(port) == 200, what="the daemon to be ready")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            tags = c.get("/api/v1/tags", params={"repository": f"{registry.host}/{repo}"}).json()
            assert [(t["tag"], t["recorded_digest"]) for t in tags["tags"]] == [
                ("0.15.0", release.digest)
            ]
            rebuilt = pusher.index(repo, "0.15.0", seed="rebuilt")
            drifted = wait_for(
                lambda: c.get("/api/v1/tags", params={"state": "drifted"}).json()["tags"]
            )
            assert drifted[0]["current_digest"] == rebuilt.digest

            plan = c.post("/api/v1/restore", json={"ref": ref, "dry_run": True}, headers=auth)
            assert plan.status_code == 200 and plan.json()["result"] == "plan", plan.text
            assert plan.json()["plan"]["digest"] == release.digest
            done = c.post("/api/v1/restore", json={"ref": ref}, headers=auth)
            assert done.status_code == 200 and done.json()["result"] == "restored", done.text
            assert done.json()["event"]["actor"] == "api"
            head = httpx.head(
                f"{registry.url}/v2/{repo}/manifests/0.15.0", headers={"Accept": media.ACCEPT}
            )
            assert head.headers["docker-content-digest"] == release.digest

            # a deliberate re-release, accepted through the API
            second = pusher.index(repo, "0.15.0", seed="deliberate")
            wait_for(
                lambda: any(
                    t["current_digest"] == second.digest
                    for t in c.get("/api/v1/tags").json()["tags"]
                )
            )
            accepted = c.post("/api/v1/accept", json={"ref": ref, "reason": "hotfix"}, headers=auth)
            assert accepted.status_code == 200, accepted.text
            assert accepted.json()["event"]["kind"] == "accepted"
            history = c.get("/api/v1/history", params={"ref": ref}).json()
            kinds = [e["kind"] for e in history["events"]]
            assert kinds[0] == "first_seen" and kinds[-1] == "accepted"
            assert "restored" in kinds and kinds.count("moved") == 2
            final = c.get("/api/v1/tags").json()["tags"][0]
            assert final["recorded_digest"] == second.digest and final["state"] == "ok"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert TOKEN not in err


@pytest.mark.parametrize("kind", [k.value for k in models.EventKind])
def test_every_event_kind_is_documented(kind: str) -> None:
    enum = api.OPENAPI["components"]["schemas"]["Event"]["properties"]["kind"]["enum"]
    assert kind in enum


async def test_the_tag_view_shows_the_vault_state_of_the_recorded_digest(store: repo.Store) -> None:
    import datetime as dt

    from starlette.applications import Starlette

    at = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    name, digest = "ghcr.io/deephaven/server", "sha256:" + "b" * 64
    vaulted = repo.Store(store.engine, vaulted=[name])
    record = models.TagRecord(name, "1.0.0", digest, digest, None, models.TagState.OK, at, at, at)
    event = models.Event(name, "1.0.0", models.EventKind.FIRST_SEEN, at, new_digest=digest)
    vaulted.apply_check(name, at, [models.Change(name, "1.0.0", record, event)])
    (copy,) = vaulted.vault.due(at)
    vaulted.vault.mark_kept(copy.id, at, "ghcr.io/acme/vault/ghcr.io/deephaven/server", "1.0.0--b")
    app = Starlette(routes=api.routes(vaulted, None, NoActions()))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://watchdog") as c:
        (tag,) = (await c.get("/api/v1/tags")).json()["tags"]
    assert tag["vault"]["state"] == "kept"
    assert tag["vault"]["repository"] == "ghcr.io/acme/vault/ghcr.io/deephaven/server"
    assert tag["vault"]["tag"] == "1.0.0--b" and tag["vault"]["at"] == "2026-05-01T00:00:00Z"
