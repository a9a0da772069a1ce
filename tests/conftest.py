from __future__ import annotations

pytest_plugins = [
    "pytester",  # tests/test_parallel.py runs small suites of its own
    "tests.support.parallel",
    "tests.support.no_skips",
    "tests.support.registry_fixtures",
    "tests.support.db_fixtures",
    "tests.support.slack_fixtures",
]
