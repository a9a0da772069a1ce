"""``WATCHDOG_NO_SKIPS=1``: a skipped test fails the run (a pytest plugin, listed in
tests/conftest.py).

scripts/test (and so CI) sets it: the PostgreSQL half of the store suite, the registry and
Prometheus tests must really run, never pass by being skipped. An expected failure (``xfail``,
which pytest reports as a kind of skip) is not a skip.

Skips are counted from ``pytest_runtest_logreport``, which the process that prints the summary
sees for every test: the only process without pytest-xdist, the controller with it (workers send
their reports there). The controller sets the exit status; workers count nothing.
"""

from __future__ import annotations

import os

import pytest

ENV = "WATCHDOG_NO_SKIPS"


class NoSkips:
    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}  # node id -> reason

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
            self.skipped.setdefault(report.nodeid, str(reason))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.skipped:
            return
        listing = "\n  ".join(f"{node}: {why}" for node, why in list(self.skipped.items())[:10])
        print(f"\n{ENV} is set but {len(self.skipped)} test(s) were skipped:\n  {listing}")
        if session.exitstatus == pytest.ExitCode.OK:  # a worse status (interrupted...) stays
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(NoSkips(), "tag-watchdog-no-skips")
