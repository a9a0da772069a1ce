from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.db_fixtures",
    "tests.support.slack_fixtures",
]

_skipped: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        _skipped.append(
            f"{item.nodeid}: {report.longrepr[-1] if isinstance(report.longrepr, tuple) else ''}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # scripts/test (and so CI) sets WATCHDOG_NO_SKIPS=1: the PostgreSQL half of the store suite,
    # the registry and Prometheus tests must really run, never pass by being skipped.
    if os.environ.get("WATCHDOG_NO_SKIPS") and _skipped:
        listing = "\n  ".join(_skipped[:10])
        print(f"\nWATCHDOG_NO_SKIPS is set but {len(_skipped)} test(s) were skipped:\n  {listing}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
