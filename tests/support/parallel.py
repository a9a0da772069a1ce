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


def worker_id() -> str:
    """``gw0``, ``gw1``... on a pytest-xdist worker; ``main`` in a run without workers."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller(config):
        config.stash[_dir_key] = tempfile.mkdtemp(prefix="tag-watchdog-serial-")


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_dir_key, None)
    if path and _is_controller(config):
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist, in the controller) hand each worker the directory of the run's locks."""
    node.workerinput[LOCK_KEY] = node.config.stash[_dir_key]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in SERIAL:
            item.add_marker(pytest.mark.serial(reason=SERIAL[name]))


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
