"""Running the suite on several pytest-xdist workers (a pytest plugin, listed in tests/conftest.py).

``./scripts/test`` runs ``pytest -n N``; a plain ``pytest`` runs in one process, as before. Each
worker has its own session-scoped registries, its own temporary directories (``tmp_path`` lives
under ``<basetemp>/gwN``), its own PostgreSQL databases (``worker_id()`` is in their names) and
its own ports (tests/support/ports.py).

``@pytest.mark.serial``: the test runs ALONE, no other test running on any worker meanwhile. For
tests that disturb what every worker shares (the PostgreSQL server) or that assert tight upper
bounds on time. Other tests hold a shared lock while they run, a serial test the exclusive one;
a waiting serial test first takes a gate that new tests pass through, so it is not starved.
``SERIAL`` marks tests by function name from here, for files whose owners have not added the
marker themselves (a name listed here that no test has fails tests/test_parallel.py).

Order on workers: longest first, serial tests last. The longest tests start first so that none
of them is left running alone at the end (``--dist load --maxschedchunk 2`` hands tests out in
this order, two at a time); serial tests go last, when only short tests are left to wait for.
How long a test takes comes from the last run (``.pytest_cache``), else from ``SLOW`` (a clean
clone, as CI has).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LOCK_KEY = "tag_watchdog_serial_lock_dir"

# test function name -> why it must run alone
SERIAL: dict[str, str] = {
    "test_postgres_restarted_under_run_loses_and_doubles_nothing": (
        "stops and starts the PostgreSQL server that every worker's tests use"
    ),
}


# test function name -> seconds it took on the 2-core machine (docs/PERFORMANCE.md), for runs
# without a cache of their own
SLOW: dict[str, float] = {
    "test_sigkill_at_random_points_of_cycles_and_restores_loses_and_doubles_nothing": 30,
    "test_no_secret_in_any_output_or_the_database": 36,
    "test_three_replicas_check_each_watch_once_per_interval": 33,
    "test_run_under_another_writer_waits_or_errs_and_records_the_move_once": 22,
    "test_postgres_restarted_under_run_loses_and_doubles_nothing": 15,
}
CACHE_KEY = "tag-watchdog/durations"


def worker_id() -> str:
    """``gw0``, ``gw1``... on a pytest-xdist worker; ``main`` in a run without workers."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller(config):
        config.stash[_dir_key] = tempfile.mkdtemp(prefix="tag-watchdog-serial-")
        config.pluginmanager.register(_Durations(), "tag-watchdog-durations")


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_dir_key, None)
    if path and _is_controller(config):
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist, in the controller) hand each worker the directory of the run's locks."""
    node.workerinput[LOCK_KEY] = node.config.stash[_dir_key]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _name(item) in SERIAL:
            item.add_marker(pytest.mark.serial(reason=SERIAL[_name(item)]))
    if _is_controller(config):
        return  # one process: the files' order, as always
    # every worker sorts alike (the cache is only written when the run is over): xdist insists
    # on identical collections
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    known: dict[str, float] = cache.get(CACHE_KEY, {}) if cache else {}

    def key(item: pytest.Item) -> tuple[bool, float]:
        took = known.get(item.nodeid, SLOW.get(_name(item), 0.0))
        return (item.get_closest_marker("serial") is not None, -took)

    items.sort(key=key)


class _Durations:
    """(in the controller) how long each test took, kept in the cache for the next run's order."""

    def __init__(self) -> None:
        self.took: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.took[report.nodeid] = self.took.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.took:
            return
        known: dict[str, float] = cache.get(CACHE_KEY, {})
        known.update({k: round(v, 2) for k, v in self.took.items()})
        cache.set(CACHE_KEY, known)


def _name(item: pytest.Item) -> str:
    return getattr(item, "originalname", item.name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None or LOCK_KEY not in workerinput:
        return (yield)  # one process: nothing runs beside this test anyway
    serial = item.get_closest_marker("serial") is not None
    with _turn(Path(workerinput[LOCK_KEY]), exclusive=serial):
        return (yield)


_dir_key = pytest.StashKey[str]()


def _is_controller(config: pytest.Config) -> bool:
    """True in the process that starts workers (or in a run without xdist)."""
    return not hasattr(config, "workerinput")


@contextlib.contextmanager
def _turn(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the run's test lock: shared for an ordinary test, exclusive for a serial one."""
    with (directory / "gate").open("a+b") as gate, (directory / "tests").open("a+b") as tests:
        fcntl.flock(gate.fileno(), fcntl.LOCK_EX)
        try:
            fcntl.flock(tests.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate.fileno(), fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(tests.fileno(), fcntl.LOCK_UN)
