"""Pytest fixtures: real registries (open, htpasswd, token), pushers and fault proxies.

``registry``, ``basic_registry`` and ``token_registry`` are started once per session; tests stay
independent by using their own repository names (``repo`` fixture). ``own_registry`` is a
private open registry per test, for tests that stop and restart it. Fixtures that expose
mutable state (the token issuer, proxies) reset it for every test.

Example::

    async def test_head(registry, repo, pusher):
        pushed = pusher.image(repo, "1.0.0")
        async with client.RegistryClient(registry.settings()) as rc:
            head = await rc.head_manifest(repo, "1.0.0")
        assert head.digest == pushed.digest
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import faultproxy, images
from tests.support import registry as support_registry

_counter = itertools.count(1)


def _require_binary() -> str:
    binary = support_registry.find_binary()
    if binary is None:
        pytest.skip("the docker-registry binary (CNCF distribution) is not installed")
    return binary


def _start(
    tmp_path_factory: pytest.TempPathFactory, mode: str
) -> Iterator[support_registry.RegistryServer]:
    binary = _require_binary()
    workdir: Path = tmp_path_factory.mktemp(f"registry-{mode}")
    server = support_registry.RegistryServer(workdir, mode, binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support_registry.RegistryServer]:
    """An open (anonymous) registry, shared by the session."""
    yield from _start(tmp_path_factory, "open")


@pytest.fixture(scope="session")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[support_registry.RegistryServer]:
    """A registry behind htpasswd basic auth (``.username``/``.password``), shared by the session."""
    yield from _start(tmp_path_factory, "basic")


@pytest.fixture(scope="session")
def _token_registry_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[support_registry.RegistryServer]:
    yield from _start(tmp_path_factory, "token")


@pytest.fixture
def token_registry(
    _token_registry_session: support_registry.RegistryServer,
) -> support_registry.RegistryServer:
    """A registry using token auth with the in-test issuer (``.issuer``), issuer state reset."""
    assert _token_registry_session.issuer is not None
    _token_registry_session.issuer.reset()
    return _token_registry_session


@pytest.fixture
def token_issuer(token_registry: support_registry.RegistryServer) -> support_registry.TokenIssuer:
    assert token_registry.issuer is not None
    return token_registry.issuer


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[support_registry.RegistryServer]:
    """A private open registry for one test, which may ``stop()`` and ``start()`` it again
    (same port, same storage: "the registry went away mid-run"). Closed after the test."""
    binary = _require_binary()
    server = support_registry.RegistryServer(tmp_path / "own-registry", "open", binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, e.g. ``t/test-head-index-7``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:80] or "test"
    return f"t/{name}-{next(_counter)}"


def _pusher_for(server: support_registry.RegistryServer) -> images.Pusher:
    return images.Pusher(server.url, auth_for=server.push_auth)


@pytest.fixture
def pusher(registry: support_registry.RegistryServer) -> Iterator[images.Pusher]:
    """Pushes real content to the open ``registry`` with plain httpx."""
    with _pusher_for(registry) as p:
        yield p


@pytest.fixture
def make_pusher() -> Iterator[Callable[[support_registry.RegistryServer], images.Pusher]]:
    """``make_pusher(server)``: a Pusher with push rights on any of the test registries."""
    made: list[images.Pusher] = []

    def make(server: support_registry.RegistryServer) -> images.Pusher:
        p = _pusher_for(server)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def make_fault_proxy() -> Iterator[
    Callable[[support_registry.RegistryServer], faultproxy.FaultProxy]
]:
    """``make_fault_proxy(server)``: a started FaultProxy in front of ``server``; stopped after."""
    made: list[faultproxy.FaultProxy] = []

    def make(server: support_registry.RegistryServer) -> faultproxy.FaultProxy:
        proxy = faultproxy.FaultProxy(server.host).start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def fault_proxy(
    registry: support_registry.RegistryServer,
    make_fault_proxy: Callable[[support_registry.RegistryServer], faultproxy.FaultProxy],
) -> faultproxy.FaultProxy:
    """A FaultProxy in front of the open ``registry`` (``.host`` to point a client at it)."""
    return make_fault_proxy(registry)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[support_registry.RegistryServer]:
    """An open registry of this test's own (it may stop it, or fill it with many repositories)."""
    if support_registry.find_binary() is None:
        pytest.skip("docker-registry is not installed")
    srv = support_registry.RegistryServer(tmp_path / "registry", "open").start()
    yield srv
    srv.close()
