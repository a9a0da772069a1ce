"""A check that crashes (a bug, not a registry answer) is counted and logged as a failed check.

Nested JSON (issue 14 item 3) used to reach the daemon as RecursionError: ``check_crashed`` each
cycle, no ``check_failed``, no error metric. That cause is fixed in the registry client; this is
the net under whatever bug comes next, so the test injects one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.support import cli, hostile
from tests.test_service import make_checker
from watchdog import config, observe
from watchdog.registry import media
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


def test_scan_goes_on_past_a_registry_answering_json_nested_too_deep(tmp_path: Path) -> None:
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": "sha256:" + "0" * 64, "size": 2},
            "layers": [],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()

    def registry(seen: hostile.Seen) -> hostile.Reply:
        if seen.path == "/v2/team/deep/tags/list":
            return hostile.Reply(200, hostile.nested_object("tags"))
        if seen.path == "/v2/team/app/tags/list":
            return hostile.Reply(200, {"name": "team/app", "tags": ["1.0.0"]})
        if seen.path in ("/v2/team/app/manifests/1.0.0", f"/v2/team/app/manifests/{digest}"):
            headers = [("Content-Type", media.OCI_MANIFEST), ("Docker-Content-Digest", digest)]
            return hostile.Reply(200, manifest, headers)
        if seen.path == "/v2/":
            return hostile.Reply(200, {})
        return hostile.Reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    with hostile.HostileServer(registry) as server:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"database_url: sqlite:///{tmp_path / 'w.db'}\n"
            f"watches:\n  - repository: {server.host}/team/deep\n"
            f"  - repository: {server.host}/team/app\n"
        )
        done = cli.run("scan", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "internal error" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "nested deeper than" in done.stdout + done.stderr
    status = json.loads(cli.run("status", "--json", "-c", str(cfg), cwd=tmp_path).stdout)
    assert digest in json.dumps(status), status  # the watch after the hostile one was checked
