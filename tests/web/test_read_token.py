"""``http.read_token``: on a public listen, /metrics, the API's reads, the OpenAPI document and
/readyz's reasons are closed to who does not give it; /healthz stays open for probes. Without
it, nothing changes: /metrics is open, reads are open on loopback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.web.test_api import NoActions
from watchdog import config, metrics
from watchdog.store import repo
from watchdog.web import app as web_app

READ, WRITE = "read-token-for-tests", "api-token-for-tests"
REMOTE, LOOPBACK = "203.0.113.9", "127.0.0.1"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def _not_ready() -> tuple[bool, dict[str, Any]]:
    return False, {"problems": ["db.internal.example: unreachable"]}


def _client(store: repo.Store, host: str, **http: str) -> httpx.AsyncClient:
    settings = config.from_mapping({"http": http})
    app = web_app.build_app(
        metrics.Metrics(),
        _not_ready,
        settings=settings,
        store=store,
        actions_=NoActions(),  # type: ignore[arg-type]
        spawn=lambda work, name: False,
    )
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://watchdog")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


READS = ("/metrics", "/api/v1/tags", "/api/v1/openapi.json")


@SQLITE_ONLY
async def test_without_a_read_token_nothing_changes(store: repo.Store) -> None:
    async with _client(store, REMOTE, api_token=WRITE) as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/api/v1/openapi.json")).status_code == 200
        assert (await c.get("/api/v1/tags")).status_code == 401
        assert (await c.get("/api/v1/tags", headers=_bearer(WRITE))).status_code == 200
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["problems"]
    async with _client(store, LOOPBACK) as c:
        assert (await c.get("/api/v1/tags")).status_code == 200


@SQLITE_ONLY
@pytest.mark.parametrize("host", [REMOTE, LOOPBACK])
async def test_a_read_token_closes_metrics_reads_and_readyz_reasons(
    store: repo.Store, host: str
) -> None:
    async with _client(store, host, api_token=WRITE, read_token=READ) as c:
        for path in READS:
            refused = await c.get(path)
            assert refused.status_code == 401, path
            assert "http.read_token" in refused.json()["error"]
            assert (await c.get(path, headers=_bearer("wrong"))).status_code == 401, path
            assert (await c.get(path, headers=_bearer(READ))).status_code == 200, path
            assert (await c.get(path, headers=_bearer(WRITE))).status_code == 200, path
        assert "tag_watchdog_" in (await c.get("/metrics", headers=_bearer(READ))).text
        # probes keep their answer; the reasons (hosts, repositories) are for token holders
        anonymous = await c.get("/readyz")
        assert anonymous.status_code == 503
        assert anonymous.json() == {"status": "not ready"}
        told = await c.get("/readyz", headers=_bearer(READ))
        assert told.status_code == 503 and told.json()["problems"]
        assert (await c.get("/healthz")).status_code == 200
        # the read token is no write token
        write = await c.post("/api/v1/accept", json={"ref": "a/b:1"}, headers=_bearer(READ))
        assert write.status_code == 401
