"""Limits: oversized manifests, absurd tag lists, oversized token answers and huge headers are
refused with a clear, one-line error; the check goes on for the other tags and watches; the
memory of a ``tag-watchdog scan`` facing huge and endless answers stays bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry
from tests.support.cli import clean_env
from tests.test_service import Clock, _no_sleep
from watchdog import config, errors, metrics, models, service
from watchdog.registry import auth, media, transport
from watchdog.registry import client as registry_client
from watchdog.store import repo as store_repo

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def checker_for(
    store: store_repo.Store, settings: config.RegistrySettings, *repositories: str
) -> tuple[service.Checker, list[config.WatchSettings]]:
    watches = [
        config.WatchSettings(repository=models.ImageRef.parse(f"{settings.host}/{r}"))
        for r in repositories
    ]
    all_settings = config.Settings(registries=(settings,), watches=tuple(watches))
    clients = service.Clients(
        all_settings,
        sleep=_no_sleep,
        retry=dataclasses.replace(registry_client.DEFAULT_RETRY, attempts=2, base=0.0),
    )
    return service.Checker(all_settings, store, clients, metrics.Metrics(), clock=Clock()), watches


def one_line(text: str) -> bool:
    return "\n" not in text and len(text) <= 1000


@pytest.fixture
def two_images(repo: str, pusher: images.Pusher) -> tuple[images.Pushed, images.Pushed]:
    return pusher.image(repo, "1.0.0", seed="big"), pusher.image(repo, "2.0.0", seed="fine")


@SQLITE_ONLY
@pytest.mark.parametrize("shape", ["content-length", "endless"])
async def test_an_oversized_manifest_fails_that_tag_only(
    store, registry, repo, two_images, fault_proxy, shape
):
    if shape == "content-length":
        fault_proxy.huge("GET", r"/manifests/1\.0\.0", 6 * MiB)
    else:
        fault_proxy.stream("GET", r"/manifests/1\.0\.0", chunk=MiB)
    checker, (watch,) = checker_for(store, registry.settings(host=fault_proxy.host), repo)
    result = await checker.check_watch(watch)
    assert list(result.tag_errors) == ["1.0.0"]
    message = result.tag_errors["1.0.0"]
    assert f"over the {media.MAX_MANIFEST_BYTES}-byte limit" in message and one_line(message)
    assert store.get_tag(watch.name, "1.0.0") is None
    fine = store.get_tag(watch.name, "2.0.0")
    assert fine is not None and fine.recorded_digest == two_images[1].digest


def tags_page(first: int, count: int) -> bytes:
    return json.dumps(
        {"name": "x", "tags": [f"9.0.{i}" for i in range(first, first + count)]}
    ).encode()


def endless_pages(per_page: int) -> faultproxy.Reply:
    """Pages of ``per_page`` new tags, each with a Link to the next, for ever."""

    def reply(request: faultproxy.Seen) -> faultproxy.Answer:
        last = (request.query.get("last") or ["9.0.-1"])[0]
        first = int(last.rsplit(".", 1)[1]) + 1
        path = urllib.parse.urlsplit(request.path).path
        link = f'<{path}?n={per_page}&last=9.0.{first + per_page - 1}>; rel="next"'
        return faultproxy.Answer(
            200,
            [("Content-Type", "application/json"), ("Link", link)],
            tags_page(first, per_page),
        )

    return reply


@SQLITE_ONLY
async def test_absurd_tag_lists_fail_that_watch_only(
    store, registry, repo, pusher, two_images, fault_proxy
):
    absurd = repo + "-absurd"
    pusher.image(absurd, "1.0.0", seed="absurd")
    listing = rf"/v2/{faultproxy.quote_path(absurd)}/tags/list"
    checker, (crazy, sane) = checker_for(
        store, registry.settings(host=fault_proxy.host), absurd, repo
    )
    cases = [
        ("200,000 tags in one page", dict(status=200, body=tags_page(0, 200_000))),
        ("endless pages of 1000 new tags", dict(reply=endless_pages(1000))),
        ("endless pages of 1 new tag", dict(reply=endless_pages(1))),
    ]
    expected = [
        f"more than {registry_client.MAX_TAGS} tags",
        f"more than {registry_client.MAX_TAGS} tags",
        f"more than {registry_client.MAX_TAG_PAGES} pages",
    ]
    for (what, rule), wanted in zip(cases, expected, strict=True):
        fault_proxy.reset()
        fault_proxy.add("GET", listing, **rule)
        bad, good = await checker.check_watch(crazy), await checker.check_watch(sane)
        assert bad.error is not None and wanted in bad.error and one_line(bad.error), what
        assert bad.events == [] and store.all_tags(crazy.name) == [], what
        assert good.ok, what
    assert {t.tag for t in store.all_tags(sane.name)} == {"1.0.0", "2.0.0"}


@SQLITE_ONLY
async def test_huge_headers_fail_that_tag_only(store, registry, repo, two_images, fault_proxy):
    fault_proxy.rewrite_header("HEAD", r"/manifests/1\.0\.0", "X-Padding", "a" * 200_000)
    checker, (watch,) = checker_for(store, registry.settings(host=fault_proxy.host), repo)
    result = await checker.check_watch(watch)
    assert list(result.tag_errors) == ["1.0.0"]
    message = result.tag_errors["1.0.0"]
    wanted = f"the response headers are over the {transport.MAX_HEADER_BYTES}-byte limit"
    assert message.endswith(wanted) and one_line(message), message
    assert store.get_tag(watch.name, "2.0.0") is not None


@pytest.fixture
def issuer_proxy(token_registry) -> Iterator[faultproxy.FaultProxy]:
    """A fault proxy in front of the token issuer (the registry's realm is pointed at it)."""
    assert token_registry.issuer is not None
    proxy = faultproxy.FaultProxy(f"127.0.0.1:{token_registry.issuer.port}").start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize(
    ("what", "rule", "wanted"),
    [
        (
            "a 2 MiB answer",
            lambda p: p.huge("GET", "/token", 2 * MiB, content_type="application/json"),
            f"over the {auth.MAX_TOKEN_BODY_BYTES}-byte limit",
        ),
        (
            "an endless answer",
            lambda p: p.stream("GET", "/token", chunk=MiB, content_type="application/json"),
            f"over the {auth.MAX_TOKEN_BODY_BYTES}-byte limit",
        ),
        (
            "a 600 KB token",
            lambda p: p.fail(
                "GET",
                "/token",
                200,
                body=json.dumps({"token": "t" * 600_000}),
                headers={"Content-Type": "application/json"},
            ),
            "token of 600000 bytes",
        ),
    ],
)
async def test_oversized_token_answers_are_refused(
    token_registry, repo, make_pusher, make_fault_proxy, issuer_proxy, what, rule, wanted
):
    make_pusher(token_registry).image(repo, "1.0.0")
    proxy = make_fault_proxy(token_registry)
    assert token_registry.issuer is not None
    realm = token_registry.issuer.realm

    def redirect_realm(answer: faultproxy.Answer, request: faultproxy.Seen) -> faultproxy.Answer:
        challenge = answer.header("www-authenticate")
        if challenge:
            answer.set_header(
                "WWW-Authenticate", challenge.replace(realm, issuer_proxy.url + "/token")
            )
        return answer

    proxy.add(None, "/v2/", transform=redirect_realm)
    rule(issuer_proxy)
    async with registry_client.RegistryClient(
        token_registry.settings(host=proxy.host), sleep=_no_sleep
    ) as rc:
        with pytest.raises(errors.RegistryError) as exc:
            await rc.head_manifest(repo, "1.0.0")
    message = str(exc.value)
    assert wanted in message and one_line(message), message
    assert token_registry.password not in message


WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)
MAX_RSS_MB = 150


def test_scan_memory_stays_bounded_facing_huge_answers(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
) -> None:
    for tag in ("1.0.0", "2.0.0", "3.0.0"):
        pusher.image(repo, tag, seed=tag)
    absurd = repo + "-absurd"
    pusher.image(absurd, "1.0.0", seed="absurd")
    proxy = make_fault_proxy(registry)
    proxy.stream("GET", r"/manifests/1\.0\.0", chunk=MiB)  # endless
    proxy.huge("GET", r"/manifests/2\.0\.0", 64 * MiB)  # announced by Content-Length
    proxy.stream("GET", rf"/v2/{faultproxy.quote_path(absurd)}/tags/list", chunk=MiB)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
        f"registries:\n  - host: {proxy.host}\n    timeout: 5s\n"
        f"watches:\n  - repository: {proxy.host}/{repo}\n  - repository: {proxy.host}/{absurd}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "watchdog", "scan", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert done.returncode == 3, done.stderr  # could not complete
    peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    out = os.environ.get("WATCHDOG_RELIABILITY_OUT")
    if out:  # docs/RELIABILITY.md quotes the figure
        Path(out).with_suffix(".rss.json").write_text(json.dumps({"peak_rss_mb": peak_mb}) + "\n")
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"
    assert "Traceback" not in done.stderr
