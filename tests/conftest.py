from __future__ import annotations

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.db_fixtures",
]
