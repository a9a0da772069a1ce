from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.db_fixtures",
]

_skipped_postgres: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("postgres") is not None:
        _skipped_postgres.append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI sets WATCHDOG_REQUIRE_PG=1: the PostgreSQL half of the store suite must really run.
    if os.environ.get("WATCHDOG_REQUIRE_PG") and _skipped_postgres:
        print(
            f"\nWATCHDOG_REQUIRE_PG is set but {len(_skipped_postgres)} PostgreSQL test(s) were "
            f"skipped, e.g. {_skipped_postgres[0]}"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
