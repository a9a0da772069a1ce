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
    clock = staticmethod(models.utcnow)

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
            # again: the tag answers its record, so nothing is PUT and nothing recorded
            again = c.post("/api/v1/restore", json={"ref": ref}, headers=auth)
            assert again.status_code == 200 and again.json()["result"] == "nothing_to_do"
            assert "already answers" in again.json()["reason"] and again.json()["event"] is None

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
            assert kinds.count("restored") == 1 and kinds.count("moved") == 2
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


# --- incidents (issue 16) --------------------------------------------------------------------

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def burst(store: repo.Store) -> None:
    """Two repositories of ghcr.io/acme, first seen, then three tags moved within the window:
    one incident (id 1); and ghcr.io/other/x moved: another (id 2)."""
    import datetime as dt

    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    tags = [("ghcr.io/acme/server", "1.0.0"), ("ghcr.io/acme/server", "2.0.0")]
    tags += [("ghcr.io/acme/web", "1.0.0"), ("ghcr.io/other/x", "1.0.0")]
    for name, tag in tags:
        record = models.TagRecord(name, tag, OLD, OLD, None, models.TagState.OK, at, at, at)
        event = models.Event(name, tag, models.EventKind.FIRST_SEEN, at, new_digest=OLD)
        store.apply_check(name, at, [models.Change(name, tag, record, event)])
    for i, (name, tag) in enumerate(tags, 1):
        now = at + dt.timedelta(seconds=i)
        record = models.TagRecord(name, tag, OLD, NEW, None, models.TagState.DRIFTED, at, now, now)
        detail: dict[str, Any] = {"changed_platforms": ["linux/amd64"]}
        if i == 1:
            detail["pushed_by"] = {"source": "registry", "actor": "ci-bot"}
        event = models.Event(name, tag, models.EventKind.MOVED, now, OLD, NEW, detail=detail)
        store.apply_check(name, now, [models.Change(name, tag, record, event)])


async def test_incidents_read_and_their_restore_is_a_write(store: repo.Store) -> None:
    from starlette.applications import Starlette

    store = repo.Store(store.engine, grouping=models.Grouping())
    burst(store)
    secret = config.Secret(TOKEN)
    app = Starlette(routes=api.routes(store, secret, NoActions()))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://watchdog") as c:
        listed = (await c.get("/api/v1/incidents")).json()["incidents"]
        assert [(i["id"], i["group_key"], i["tag_count"]) for i in listed] == [
            (2, "ghcr.io/other", 1),
            (1, "ghcr.io/acme", 3),
        ]
        acme = listed[1]
        assert acme["counts"] == {"moved": 3} and acme["pushed_by"] == ["ci-bot"]
        assert acme["open"] is False and acme["registry"] == "ghcr.io"  # closed long ago
        assert [t["ref"] for t in acme["tags"]] == [
            "ghcr.io/acme/server:1.0.0",
            "ghcr.io/acme/server:2.0.0",
            "ghcr.io/acme/web:1.0.0",
        ]
        assert "events" not in acme
        one = await c.get("/api/v1/incidents", params={"limit": "1"})
        assert [i["id"] for i in one.json()["incidents"]] == [2]
        web = await c.get("/api/v1/incidents", params={"repository": "ghcr.io/acme/web"})
        assert [i["id"] for i in web.json()["incidents"]] == [1]

        shown = await c.get("/api/v1/incidents/1")
        assert shown.status_code == 200
        assert {k: v for k, v in shown.json().items() if k != "events"} == acme
        assert [(e["kind"], e["incident"]) for e in shown.json()["events"]] == [("moved", 1)] * 3
        history = await c.get("/api/v1/history", params={"ref": "ghcr.io/acme/web:1.0.0"})
        assert [e["incident"] for e in history.json()["events"]] == [None, 1]

        missing = await c.get("/api/v1/incidents/99")
        assert missing.status_code == 404 and "no incident 99" in missing.json()["error"]
        for path, params in [
            ("/api/v1/incidents/x1", {}),
            ("/api/v1/incidents", {"limit": "0"}),
            ("/api/v1/incidents", {"limit": "many"}),
            ("/api/v1/incidents", {"repository": "Not A Repo"}),
        ]:
            assert (await c.get(path, params=params)).status_code == 400, (path, params)

        # the restore is a write: the token, always; an unknown incident is 404 (nothing planned)
        assert (await c.post("/api/v1/incidents/1/restore")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await c.post("/api/v1/incidents/1/restore", headers=wrong)).status_code == 401
        gone = await c.post("/api/v1/incidents/99/restore", headers=auth)
        assert gone.status_code == 404 and "no incident 99" in gone.json()["error"]
        bad = await c.post("/api/v1/incidents/1/restore", json={"dry_run": "yes"}, headers=auth)
        assert bad.status_code == 400
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.1.2.3", 40000)), base_url="http://w"
    ) as c:
        assert (await c.get("/api/v1/incidents")).status_code == 401  # not loopback: token
        assert (await c.get("/api/v1/incidents/1", headers=auth)).status_code == 200


def test_an_incident_restored_through_a_real_daemon(
    tmp_path: Path, registry: support_registry.RegistryServer, repo: str, pusher: images.Pusher
) -> None:
    """Two tags moved: one incident; POST /api/v1/incidents/1/restore plans (dry_run) and then
    puts both back, bit for bit, as the actor ``api``."""
    releases = {t: pusher.image(repo, t, seed=f"release-{t}") for t in ("1.0.0", "2.0.0")}
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\ninterval: 1s\njitter: 0s\n"
        "incidents: {window: 10m}\n"
        f"http: {{listen: '127.0.0.1:{port}', api_token: '${{TOKEN}}'}}\n"
        f"watches: ['{registry.host}/{repo}']\n"
    )
    daemon = start_daemon(cfg, tmp_path, {"TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def answers() -> dict[str, str]:
        return {
            t: httpx.head(
                f"{registry.url}/v2/{repo}/manifests/{t}", headers={"Accept": media.ACCEPT}
            ).headers["docker-content-digest"]
            for t in releases
        }

    try:
        wait_for(lambda: http_status(port) == 200, what="the daemon to be ready")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            wait_for(lambda: len(c.get("/api/v1/tags").json()["tags"]) == 2, what="first sight")
            rebuilt = {t: pusher.image(repo, t, seed=f"rebuilt-{t}") for t in releases}

            def both_moved() -> list[dict[str, Any]]:
                found = c.get("/api/v1/incidents").json()["incidents"]
                return found if found and found[0]["tag_count"] == 2 else []

            (incident,) = wait_for(both_moved, what="one incident of both moves")
            assert incident["id"] == 1 and incident["counts"] == {"moved": 2}
            assert c.post("/api/v1/incidents/1/restore").status_code == 401
            assert c.post("/api/v1/incidents/2/restore", headers=auth).status_code == 404

            plan = c.post("/api/v1/incidents/1/restore", json={"dry_run": True}, headers=auth)
            assert plan.status_code == 200, plan.text
            assert plan.json()["dry_run"] is True
            assert [r["outcome"] for r in plan.json()["results"]] == ["planned", "planned"]
            assert answers() == {t: p.digest for t, p in rebuilt.items()}  # nothing changed

            done = c.post("/api/v1/incidents/1/restore", headers=auth)
            assert done.status_code == 200, done.text
            results = done.json()["results"]
            assert sorted(r["outcome"] for r in results) == ["restored", "restored"]
            assert {r["event"]["actor"] for r in results} == {"api"}
            assert {r["event"]["incident"] for r in results} == {1}  # the restores joined it
            assert answers() == {t: p.digest for t, p in releases.items()}
            again = c.post("/api/v1/incidents/1/restore", headers=auth)
            assert again.status_code == 200 and again.json()["results"] == []
            assert "nothing to restore in incident 1" in again.json()["reason"]
            shown = c.get("/api/v1/incidents/1").json()
            assert sorted(t["state"] for t in shown["tags"]) == ["restored", "restored"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
