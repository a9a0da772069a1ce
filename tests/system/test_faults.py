"""No false events: every fault the proxy can inject, on every route it applies to.

For each fault (a row of docs/RELIABILITY.md): a baseline is recorded through the fault proxy;
then, with the fault active, one release tag really moves and another is really deleted, and the
check runs three times (more than the two confirmations a deletion needs). Nothing false may be
concluded: no event the registry's real state does not justify, every check under a blocking
fault counted as an error (result, metric, log line, the watch's consecutive errors) and every
record as it was, no alert queued. Once the fault is gone the record must be exactly right: the
move seen once, the deletion confirmed on the second clean check, one alert queued per real event,
and every archived manifest hashing to its digest.

Faults that only corrupt *successful* answers (lies about a digest) leave the registry's
definitive 404s intact, so the real deletion may be confirmed while they are active: that is a
true event, allowed; the lied-about tag itself must never change.

A restore through a lying registry never PUTs bytes that are not their digest (last test).

Set ``WATCHDOG_RELIABILITY_OUT=path.json`` to collect, per fault and backend, how many checks ran
under the fault, and how many false and lost events there were (docs/RELIABILITY.md is filled
from that file).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.test_service import make_checker
from watchdog import models
from watchdog.store import repo, tables

pytestmark = pytest.mark.registry

K = models.EventKind
OUT_ENV = "WATCHDOG_RELIABILITY_OUT"
CHECKS_UNDER_FAULT = 3
# Requests slower than this time out; the "delay" faults wait longer. Small, so the suite is fast.
TIMEOUT = 0.2

HEAD = ("HEAD", r"/manifests/")
GET = ("GET", r"/manifests/")
LIST = ("GET", r"/tags/list")
BY_DIGEST = ("GET", r"/manifests/sha256:")  # the children of an index, fetched by digest
ROUTES = {"HEAD": HEAD, "GET": GET, "LIST": LIST, "GET-by-digest": BY_DIGEST}


@dataclasses.dataclass
class Scene:
    """What a fault may need: the repository and another image's valid manifest."""

    repo: str
    other: images.Pushed


Install = Callable[[faultproxy.FaultProxy, str, str, Scene], Any]


@dataclasses.dataclass(frozen=True)
class Fault:
    id: str
    what: str
    install: Install  # (proxy, method, path, scene)
    routes: tuple[str, ...]
    # True: every check under the fault fails and nothing at all is concluded. False: the fault
    # corrupts only some answers; ``frozen`` tags must not change, other events must be true.
    blocking: bool = True
    frozen: tuple[str, ...] = ()
    errors: bool = True  # each check under the fault is counted as an error


def _status(code: int) -> Install:
    return lambda p, m, path, s: p.fail(m, path, code, body=f"<html>{code}</html>")


FAULTS = [
    # every 5xx is the same to the client (tests/registry/test_client.py checks 500/502/503):
    # 500 on every route, 502 and 503 on one route each
    Fault("http-500", "HTTP 500 with an HTML body", _status(500), ("HEAD", "GET", "LIST")),
    Fault("http-502", "HTTP 502 with an HTML body", _status(502), ("GET",)),
    Fault("http-503", "HTTP 503 with an HTML body", _status(503), ("LIST",)),
    Fault(
        "429-seconds",
        "429 with Retry-After: 1 (seconds)",
        lambda p, m, path, s: p.rate_limit(m, path, 1),
        ("HEAD", "GET", "LIST"),
    ),
    Fault(
        "429-http-date",
        "429 with Retry-After as an HTTP date two minutes ahead",
        lambda p, m, path, s: p.rate_limit(m, path, 120, http_date=True),
        ("HEAD", "GET", "LIST"),
    ),
    Fault(
        "delay",
        f"every answer delayed 0.6 s (client timeout {TIMEOUT} s)",
        lambda p, m, path, s: p.add(m, path, delay=0.6),
        ("HEAD", "GET", "LIST"),
    ),
    Fault(
        "reset",
        "connection reset (TCP RST) instead of an answer",
        lambda p, m, path, s: p.add(m, path, reset=True),
        ("HEAD", "GET", "LIST"),
    ),
    Fault(
        "drop",
        "connection closed without an answer",
        lambda p, m, path, s: p.add(m, path, drop=True),
        ("HEAD", "GET", "LIST"),
    ),
    Fault(
        "truncated",
        "half the body, full Content-Length, connection closed",
        lambda p, m, path, s: p.truncate(m, path),
        ("GET", "LIST"),
    ),
    Fault(
        "cut-json",
        "body cut mid-JSON, Content-Length and digest header matching the cut bytes",
        lambda p, m, path, s: p.cut_json(m, path),
        ("GET", "LIST"),
    ),
    Fault(
        "malformed-json",
        "200 with a JSON content type and a body that is not JSON",
        lambda p, m, path, s: p.malformed_json(m, path),
        ("GET", "LIST"),
    ),
    Fault(
        "digest-lie",
        "200 with a Docker-Content-Digest that is not the body's",
        lambda p, m, path, s: p.lie_digest(m, path),
        ("HEAD", "GET"),
        blocking=False,
        frozen=("0.15.0",),
    ),
    Fault(
        "another-manifest",
        "another image's valid manifest, with its own (matching) digest header",
        lambda p, m, path, s: p.serve_instead(m, path, s.other.body, s.other.media_type),
        ("GET",),
    ),
    Fault(
        "another-manifest-lying-header",
        "another image's valid manifest, with the digest of the one asked for",
        lambda p, m, path, s: p.serve_instead(
            m, path, s.other.body, s.other.media_type, header="lie"
        ),
        ("GET",),
    ),
    Fault(
        "another-manifest-by-digest",
        "another image's valid manifest for a GET by digest (an index's child)",
        lambda p, m, path, s: p.serve_instead(m, path, s.other.body, s.other.media_type),
        ("GET-by-digest",),
        blocking=False,  # the deleted tag's answers are all by tag: truthful 404s
        frozen=("0.15.0",),
    ),
    Fault(
        "huge-body",
        "a 6 MiB body (20 MiB for tags/list), with its Content-Length",
        lambda p, m, path, s: p.huge(m, path, (20 if "tags" in path else 6) * 1024 * 1024),
        ("GET", "LIST"),
    ),
    Fault(
        "endless-body",
        "a body without a length that never ends",
        lambda p, m, path, s: p.stream(m, path, chunk=256 * 1024),
        ("GET", "LIST"),
    ),
    Fault(
        "slow-body",
        "a body trickling one byte every 0.5 s",
        lambda p, m, path, s: p.stream(m, path, chunk=1, interval=0.5),
        ("GET",),
    ),
    Fault(
        "flap-503",
        "503 on every other request (retried: checks may succeed)",
        lambda p, m, path, s: p.fail(m, path, 503, every=2),
        ("HEAD", "GET", "LIST"),
        blocking=False,
        errors=False,
    ),
    Fault(
        "flap-another-manifest",
        "another image's manifest on every other request",
        lambda p, m, path, s: p.serve_instead(m, path, s.other.body, s.other.media_type, every=2),
        ("GET",),
        blocking=False,
        errors=False,
    ),
]

# Every fault on every route on SQLite; on PostgreSQL every fault on its first route (the store
# only sees what a check concluded, and the whole matrix twice would double the time).
CASES = [
    pytest.param("sqlite", fault, route, id=f"sqlite-{fault.id}-{route}")
    for fault in FAULTS
    for route in fault.routes
] + [
    pytest.param(
        "postgres",
        fault,
        fault.routes[0],
        id=f"postgres-{fault.id}-{fault.routes[0]}",
        marks=pytest.mark.postgres,
    )
    for fault in FAULTS
]


# --- the reliability figures ---------------------------------------------------------------------

_figures: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def reliability_figures() -> Iterator[list[dict[str, Any]]]:
    """Collects one entry per case; written to $WATCHDOG_RELIABILITY_OUT when that is set."""
    yield _figures
    out = os.environ.get(OUT_ENV)
    if out and _figures:
        Path(out).write_text(json.dumps(_figures, indent=2) + "\n")


def _backend(store: repo.Store) -> str:
    return "postgres" if store.engine.dialect.name == "postgresql" else "sqlite"


# --- helpers ------------------------------------------------------------------------------------


def _event_key(event: models.Event) -> tuple[str, K, str | None, str | None]:
    return (event.tag, event.kind, event.old_digest, event.new_digest)


def archived_rows(store: repo.Store) -> list[tuple[str, str, bytes]]:
    m = tables.manifests
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(m.c.repository, m.c.digest, m.c.body)).all()
    return [(r.repository, r.digest, bytes(r.body)) for r in rows]


def assert_archive_is_honest(store: repo.Store, allowed: set[str]) -> None:
    """Every archived row hashes to its digest, and holds only manifests that really exist."""
    for repository, digest, body in archived_rows(store):
        assert models.sha256_digest(body) == digest, f"{repository}@{digest} is not its bytes"
        assert digest in allowed, f"{repository}@{digest} was archived but never served honestly"


def errors_counted(checker: Any, host: str) -> float:
    return checker.metrics.checks.labels(registry=host, result="error")._value.get()


# --- the test -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Content:
    """Pushed once per module: every case re-points the tags at it (a few manifest PUTs)."""

    repo: str
    release: images.PushedIndex  # 0.15.0 at first
    moved: images.PushedIndex  # 0.15.0 after the re-release
    doomed: images.Pushed  # 0.16.0, deleted during the fault
    other: images.Pushed  # another image, no tag points at it


@pytest.fixture(scope="module")
def content(registry: support_registry.RegistryServer) -> Iterator[Content]:
    name = f"t/faults-{os.getpid()}"
    with images.Pusher(registry.url) as p:
        yield Content(
            repo=name,
            release=p.index(name, None, seed="release"),
            moved=p.index(name, None, seed="re-release"),
            doomed=p.image(name, None, seed="doomed"),
            other=p.image(name, None, seed="another image"),
        )


@pytest.mark.parametrize(("db_url", "fault", "route"), CASES, indirect=["db_url"])
async def test_no_false_events_under_fault(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    content: Content,
    pusher: images.Pusher,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    route: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="watchdog.service")
    name_in_registry = content.repo
    release, moved, doomed = content.release, content.moved, content.doomed
    pusher.tag(name_in_registry, "0.15.0", release.index)
    pusher.tag(name_in_registry, "0.16.0", doomed)  # (re)created: an earlier case deleted it
    proxy = make_fault_proxy(registry)
    settings = registry.settings(host=proxy.host, timeout=TIMEOUT)
    # the same database, with an alert channel: every alerted event queues one outbox row
    store = repo.Store(store.engine, channels=("slack",))
    checker, watch = make_checker(store, settings, repository=name_in_registry)
    name = watch.name

    baseline = await checker.check_watch(watch)
    assert baseline.ok, baseline
    before = {t.tag: t for t in store.all_tags(name)}
    assert set(before) == {"0.15.0", "0.16.0"}

    # Reality changes while the registry misbehaves: a move and a deletion.
    pusher.tag(name_in_registry, "0.15.0", moved.index)
    pusher.delete_manifest(name_in_registry, doomed.digest)
    truth = {
        ("0.15.0", K.MOVED, release.digest, moved.digest),
        ("0.16.0", K.DELETED, doomed.digest, None),
    }
    method, path = ROUTES[route]
    fault.install(proxy, method, path, Scene(name_in_registry, content.other))

    false_events = 0
    seen: list[tuple[str, K, str | None, str | None]] = []
    errors_before = errors_counted(checker, proxy.host)
    caplog.clear()
    for _ in range(CHECKS_UNDER_FAULT):
        result = await checker.check_watch(watch)
        for event in result.events:
            key = _event_key(event)
            if fault.blocking or key not in truth or key in seen or event.tag in fault.frozen:
                false_events += 1
            seen.append(key)
        if fault.errors:
            assert not result.ok, f"a check under {fault.id} passed as ok"
    under_fault_errors = errors_counted(checker, proxy.host) - errors_before
    alerts_under_fault = len(store.outbox.outbox_rows())
    after_fault = {t.tag: t for t in store.all_tags(name)}
    status = {w.repository: w for w in store.watch_status()}[name]
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]

    # Recovery: the record must become exactly right.
    proxy.reset()
    clean = [await checker.check_watch(watch) for _ in range(2)]
    history = {tag: [_event_key(e) for e in store.history(name, tag)] for tag in before}
    lost_events = 0
    for key in truth:
        recorded = history[key[0]].count(key)
        lost_events += recorded == 0
        false_events += max(0, recorded - 1)  # a duplicate is a false alarm
    for tag, keys in history.items():
        extra = [k for k in keys if k[1] is not K.FIRST_SEEN and k not in truth]
        false_events += len(extra)
        assert keys[0][1] is K.FIRST_SEEN, (tag, keys)
    # one alert per true event, never two for the same event
    alerted = [(row["tag"], row["event_id"]) for row in store.outbox.outbox_rows()]
    duplicate_alerts = len(alerted) - len(set(alerted))
    lost_alerts = len(truth) - len(set(alerted))

    _figures.append(
        {
            "fault": fault.id,
            "route": route,
            "what": fault.what,
            "backend": _backend(store),
            "checks_under_fault": CHECKS_UNDER_FAULT,
            "errors_counted": int(under_fault_errors),
            "false_events": false_events,
            "lost_events": lost_events,
            "alerts_under_fault": alerts_under_fault,
            "duplicate_alerts": duplicate_alerts,
            "lost_alerts": lost_alerts,
            "blocking": fault.blocking,
        }
    )

    assert false_events == 0, (fault.id, route, seen, history)
    assert lost_events == 0, (fault.id, route, history)
    assert duplicate_alerts == 0 and lost_alerts == 0, alerted
    if fault.errors:
        assert under_fault_errors == CHECKS_UNDER_FAULT
        assert status.consecutive_errors >= CHECKS_UNDER_FAULT and status.last_error
        assert logged, "no warning was logged for a failing check"
    frozen = set(before) if fault.blocking else set(fault.frozen)
    for tag in frozen:
        assert (
            dataclasses.replace(after_fault[tag], last_checked=before[tag].last_checked)
            == (before[tag])
        ), tag
    if fault.blocking:
        assert seen == [] and alerts_under_fault == 0
        assert checker.metrics.tag_moves.labels(repository=name)._value.get() == 1
        # the move is seen on the first clean check, the deletion confirmed on the second
        assert [_event_key(e) for e in clean[0].events] == [
            ("0.15.0", K.MOVED, release.digest, moved.digest)
        ]
        assert [_event_key(e) for e in clean[1].events] == [
            ("0.16.0", K.DELETED, doomed.digest, None)
        ]
    assert clean[1].ok
    final = {t.tag: t for t in store.all_tags(name)}
    assert final["0.15.0"].recorded_digest == release.digest
    assert final["0.15.0"].current_digest == moved.digest
    assert final["0.15.0"].state is models.TagState.DRIFTED
    assert final["0.16.0"].state is models.TagState.DELETED

    honest = {release.digest, moved.digest, doomed.digest}
    honest |= {c.digest for c in release.children.values()}
    honest |= {c.digest for c in moved.children.values()}
    assert_archive_is_honest(store, honest)


# --- restores never put bytes that are not their digest -----------------------------------------


def _puts_are_honest(proxy: faultproxy.FaultProxy, recorded: str) -> list[str]:
    """Every manifest PUT the proxy saw: by digest, the body hashes to it; by tag, to ``recorded``."""
    puts = [s for s in proxy.seen if s.method == "PUT" and "/manifests/" in s.path]
    for put in puts:
        reference = put.path.rsplit("/manifests/", 1)[1]
        wanted = reference if reference.startswith("sha256:") else recorded
        assert models.sha256_digest(put.body) == wanted, f"PUT {put.path} of other bytes"
    return [p.path for p in puts]


@pytest.mark.parametrize(("db_url"), ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "lie", ["another-manifest", "another-manifest-lying-header", "digest-lie-on-head"]
)
async def test_a_restore_through_a_lying_registry_never_puts_other_bytes(
    store: repo.Store,
    registry: support_registry.RegistryServer,
    content: Content,
    pusher: images.Pusher,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
    lie: str,
) -> None:
    name_in_registry, release, moved = content.repo, content.release, content.moved
    pusher.tag(name_in_registry, "0.15.0", release.index)
    proxy = make_fault_proxy(registry)
    settings = registry.settings(host=proxy.host, timeout=TIMEOUT)
    checker, watch = make_checker(store, settings, repository=name_in_registry, on_move="restore")
    assert (await checker.check_watch(watch)).ok
    pusher.tag(name_in_registry, "0.15.0", moved.index)
    # the lie hits only the restore: its GET of the recorded digest, or its HEAD after the PUT
    if lie == "digest-lie-on-head":
        proxy.add("HEAD", r"/manifests/0\.15\.0", times=1)  # the check's own HEAD goes through
        proxy.lie_digest("HEAD", r"/manifests/0\.15\.0")
    else:
        header = "lie" if lie.endswith("lying-header") else "match"
        proxy.serve_instead(
            "GET",
            rf"/manifests/{release.digest}",
            content.other.body,
            content.other.media_type,
            header=header,
        )
    result = await checker.check_watch(watch)
    puts = _puts_are_honest(proxy, release.digest)
    # whatever the lie, only the release's own bytes ever go up
    assert puts == [f"/v2/{name_in_registry}/manifests/0.15.0"]
    record = store.get_tag(watch.name, "0.15.0")
    assert record is not None and record.recorded_digest == release.digest
    if lie == "digest-lie-on-head":
        # the right bytes went up, but a HEAD that lies afterwards is no proof they took
        assert [e.kind for e in result.events] == [K.MOVED, K.RESTORE_FAILED]
        assert record.current_digest == moved.digest  # nothing concluded from the lie
    else:
        # the registry's copy of the release is a lie: the verified archive copy is used
        assert [e.kind for e in result.events] == [K.MOVED, K.RESTORED]
        assert result.events[1].detail["source"] == "archive"
        assert record.current_digest == release.digest
    honest = {release.digest, moved.digest} | {c.digest for c in release.children.values()}
    honest |= {c.digest for c in moved.children.values()}
    assert_archive_is_honest(store, honest)
