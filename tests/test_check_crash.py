"""A check that crashes (a bug, not a registry answer) is counted and logged as a failed check.

Nested JSON (issue 14 item 3) used to reach the daemon as RecursionError: ``check_crashed`` each
cycle, no ``check_failed``, no error metric. That cause is fixed in the registry client; this is
the net under whatever bug comes next, so the test injects one.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support import hostile
from tests.test_service import make_checker
from watchdog import config, observe
from watchdog.store import repo


async def test_a_crashing_check_is_a_failed_check(
    store: repo.Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def registry(seen: hostile.Seen) -> hostile.Reply:
        if seen.path.endswith("/tags/list"):
            return hostile.Reply(200, {"tags": ["1.0.0"]})
        return hostile.Reply(200, {})

    async def bug(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug with a /secret/ in its words")

    monkeypatch.setattr(observe.Observer, "tags", bug)
    with hostile.HostileServer(registry) as server:
        settings = config.RegistrySettings(host=server.host, insecure=True, timeout=5.0)
        checker, watch = make_checker(store, settings, repository="team/app")
        with caplog.at_level(logging.INFO):
            result = await checker.check_watch(watch)
    assert not result.ok and result.error == "internal error: RuntimeError"
    assert "check_failed repository=" in caplog.text and "check_crashed" in caplog.text
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    errors_counted = checker.metrics.registry.get_sample_value(
        "tag_watchdog_checks_total", {"registry": server.host, "result": "error"}
    )
    assert errors_counted == 1.0
