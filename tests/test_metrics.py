"""The metric families of DESIGN section 3, exposed through the daemon's HTTP app."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import test_service
from tests.support import images
from tests.support import registry as support_registry
from tests.support.registry import free_port
from watchdog import config, metrics, models
from watchdog.store import repo
from watchdog.store import repo as store_repo
from watchdog.web import app as web_app

DESIGN_METRICS = {
    "tag_watchdog_tags_watched",
    "tag_watchdog_tags_drifted",
    "tag_watchdog_tag_moves",
    "tag_watchdog_tag_deletions",
    "tag_watchdog_restores",
    "tag_watchdog_checks",
    "tag_watchdog_registry_requests",
    "tag_watchdog_registry_request_duration_seconds",
    "tag_watchdog_poll_duration_seconds",
    "tag_watchdog_last_successful_poll_timestamp_seconds",
    "tag_watchdog_alerts",
    "tag_watchdog_alert_outbox_pending",
    "tag_watchdog_registry_ratelimit_remaining",
    "tag_watchdog_build_info",
}


def families(m: metrics.Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}


def test_every_design_metric_is_exposed() -> None:
    assert set(families(metrics.Metrics())) >= DESIGN_METRICS


def test_drifted_tag_series_follow_the_current_set() -> None:
    m = metrics.Metrics()
    m.set_drifted_tags("ghcr.io/a/b", [("1.0.0", "drifted"), ("2.0.0", "deleted")])
    m.set_drifted_tags("ghcr.io/a/b", [("2.0.0", "deleted")])
    samples = families(m)["tag_watchdog_drifted_tag_info"].samples
    assert [(s.labels["tag"], s.labels["state"]) for s in samples] == [("2.0.0", "deleted")]


def test_observer_counts_requests_and_rate_limit() -> None:
    m = metrics.Metrics()
    m.on_request("ghcr.io", "HEAD", "200", 0.01)
    m.on_request("ghcr.io", "HEAD", "429", 0.02)
    m.on_ratelimit("ghcr.io", 99)
    fams = families(m)
    codes = {
        s.labels["code"]: s.value
        for s in fams["tag_watchdog_registry_requests"].samples
        if s.name.endswith("_total")
    }
    assert codes == {"200": 1.0, "429": 1.0}
    assert fams["tag_watchdog_registry_ratelimit_remaining"].samples[0].value == 99


async def _ready() -> tuple[bool, dict[str, Any]]:
    return False, {"problems": ["scheduler not running"]}


async def test_http_endpoints() -> None:
    m = metrics.Metrics()
    transport = httpx.ASGITransport(app=web_app.build_app(m, _ready))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await check_endpoints(client)


async def check_endpoints(client: httpx.AsyncClient) -> None:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "tag_watchdog_build_info" in resp.text
    assert (await client.get("/healthz")).json() == {"status": "alive"}
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["scheduler not running"]
    assert (await client.post("/metrics")).status_code == 405


def test_watched_repository_series_start_at_zero() -> None:
    m = metrics.Metrics()
    m.watch("ghcr.io/a/b", "ghcr.io")
    fams = families(m)
    moves = [s for s in fams["tag_watchdog_tag_moves"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in moves] == [({"repository": "ghcr.io/a/b"}, 0.0)]
    restores = {
        s.labels["result"]: s.value
        for s in fams["tag_watchdog_restores"].samples
        if s.name.endswith("_total")
    }
    assert restores == {"restored": 0.0, "failed": 0.0}
    checks = {s.labels["result"] for s in fams["tag_watchdog_checks"].samples}
    assert checks == {"ok", "error"}
    incidents = [s for s in fams["tag_watchdog_incidents"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in incidents] == [({"registry": "ghcr.io"}, 0.0)]


async def test_a_watch_that_never_succeeded_is_stale_from_when_it_was_first_watched(
    store: repo.Store,
) -> None:
    """Its last-successful-poll series exists from start-up (the rules' time() - x grows), and
    a failed check does not move it; a success does (test_service's checks)."""
    dead = config.RegistrySettings(host=f"127.0.0.1:{free_port()}")  # nothing listens there
    before = time.time()
    checker, watch = test_service.make_checker(store, dead, repository="never/ok")
    after = time.time()
    series = "tag_watchdog_last_successful_poll_timestamp_seconds"

    def value() -> float:
        (sample,) = families(checker.metrics)[series].samples
        assert sample.labels == {"repository": watch.name}
        return float(sample.value)

    started = value()
    assert before <= started <= after
    result = await checker.check_watch(watch)
    assert result.error is not None and "cannot connect" in result.error
    assert value() == started  # not a success: still the start-up time
    # a second Checker on the same metrics (never made in one process, but cheap to promise)
    # does not reset it
    checker.metrics.watch(watch.name, watch.repository.host, now=started + 100)
    assert value() == started


def incidents_opened(m: metrics.Metrics, registry: str) -> float:
    return (
        m.registry.get_sample_value("tag_watchdog_incidents_total", {"registry": registry}) or 0.0
    )


async def test_a_burst_of_moves_counts_one_incident(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
) -> None:
    """Three tags moved at once (and one more soon after, within the incident's window) opened
    one incident: ``incidents_total{registry}`` counts 1, where the moves count 4."""
    store = store_repo.Store(store.engine, channels=("slack",), grouping=models.Grouping())
    tags = ("1.0.0", "2.0.0", "3.0.0")
    for tag in tags:
        pusher.image(repo, tag, seed=f"release-{tag}")
    checker, watch = test_service.make_checker(store, registry.settings(), repository=repo)
    host = watch.repository.host
    await checker.check_watch(watch)  # first seen: no incident
    assert incidents_opened(checker.metrics, host) == 0
    for tag in tags:
        pusher.image(repo, tag, seed=f"rebuild-{tag}")
    result = await checker.check_watch(watch)
    assert sorted(e.kind.value for e in result.events) == ["moved"] * 3
    assert {e.incident_id for e in result.events} == {1}
    assert incidents_opened(checker.metrics, host) == 1
    pusher.image(repo, "1.0.0", seed="again")
    (again,) = (await checker.check_watch(watch)).events
    assert again.kind.value == "moved" and again.incident_id == 1  # joined, not opened
    assert incidents_opened(checker.metrics, host) == 1
    moves = checker.metrics.registry.get_sample_value(
        "tag_watchdog_tag_moves_total", {"repository": watch.name}
    )
    assert moves == 4
