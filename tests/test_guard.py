"""The release guard remembers: ``guard.decide`` table-tested, and ``tag-watchdog guard`` after a
release was deleted, with several references and ``--json`` in every outcome (real registry,
SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import images
from tests.support import registry as support_registry
from tests.support.cli import run
from tests.support.ports import free_port
from tests.test_restore import make_checker
from watchdog import cli as watchdog_cli
from watchdog import guard, models
from watchdog.store import repo as store_repo

K = models.EventKind
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 5, 2, 8, 30, tzinfo=dt.UTC)
REF = "r.example/a/b:1.0.0"


def _record(state: models.TagState = models.TagState.OK) -> models.TagRecord:
    return models.TagRecord(
        "r.example/a/b", "1.0.0", D1, D1, None, state, first_seen=T0, last_checked=T1,
        last_changed=T1,
    )  # fmt: skip


def _event(kind: K, at: dt.datetime) -> models.Event:
    return models.Event("r.example/a/b", "1.0.0", kind, at)


DELETED = guard.Memory(
    _record(models.TagState.DELETED), (_event(K.FIRST_SEEN, T0), _event(K.DELETED, T1))
)
CASES = [
    # (name, registry answer, memory, allowed, code, outcome, in the reasons)
    ("absent, no config", guard.Answer(), None, None, 0, "absent", "does not exist"),
    ("absent, never recorded", guard.Answer(), guard.Memory(), None, 0, "absent", "never recorded"),
    ("present", guard.Answer(D1), None, None, 1, "released", D1),
    ("present, allowed", guard.Answer(D1), None, D1, 0, "allowed", "re-run"),
    ("present, other allowed", guard.Answer(D1), None, D2, 1, "released", D1),
    ("present, recorded", guard.Answer(D1), guard.Memory(_record()), None, 1, "released",
     "first recorded 2026-03-01 12:00:00Z"),
    ("drifted: the record's digest named", guard.Answer(D2), guard.Memory(_record()), None, 1,
     "released", f"recorded (trusted) digest is {D1}"),
    ("deleted", guard.Answer(), DELETED, None, 1, "released", "disappeared 2026-05-02 08:30:00Z"),
    ("deleted, the recorded digest allowed", guard.Answer(), DELETED, D1, 1, "released",
     "re-release"),
    ("absent, deletion unconfirmed", guard.Answer(), guard.Memory(_record()), None, 1,
     "released", "not confirmed yet"),
    ("registry down, the record remembers", guard.Answer(error="refused"), DELETED, None, 1,
     "released", "could not be asked: refused"),
    ("registry down, no record", guard.Answer(error="refused"), guard.Memory(), None, 3,
     "unsure", "refused"),
    ("registry down, no config", guard.Answer(error="refused"), None, None, 3, "unsure",
     "refused"),
    ("absent, database down", guard.Answer(), guard.Memory(error="db down"), None, 3, "unsure",
     "db down"),
    ("present, database down", guard.Answer(D1), guard.Memory(error="db down"), None, 1,
     "released", D1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "memory", "allowed", "code", "outcome", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    answer: guard.Answer,
    memory: guard.Memory | None,
    allowed: str | None,
    code: int,
    outcome: str,
    reason: str,
) -> None:
    verdict = guard.decide(REF, answer, memory, allowed)
    assert (verdict.code, verdict.outcome) == (code, outcome), verdict
    assert any(reason in r for r in verdict.reasons), verdict.reasons
    shown = verdict.to_json()
    assert shown["exit_code"] == code and shown["allowed"] is (outcome == "allowed")
    json.dumps(shown)  # JSON-ready


def test_deleted_at_is_the_last_confirmed_deletion_not_one_undone() -> None:
    came_back = dataclasses.replace(
        DELETED, history=(*DELETED.history, _event(K.REAPPEARED, T1 + dt.timedelta(days=1)))
    )
    assert DELETED.deleted_at == T1
    assert came_back.deleted_at is None
    assert guard.decide(REF, guard.Answer(D1), came_back).deleted_at is None


def test_worst() -> None:
    assert guard.worst([0, 0]) == 0
    assert guard.worst([0, 3]) == 3
    assert guard.worst([3, 1, 0]) == 1  # a definite "released" is the answer, as scan's drift
    assert guard.worst([]) == 0


async def test_guard_remembers_a_deleted_release(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    pusher: images.Pusher,
    store: store_repo.Store,
    db_url: str,
) -> None:
    release = pusher.index(repo, "0.15.0", seed="release")
    checker, watch = make_checker(store, registry, repo, on_move="alert")
    await checker.check_watch(watch)
    pusher.delete_manifest(repo, release.digest)  # the tag goes with it
    await checker.check_watch(watch)
    result = await checker.check_watch(watch)  # the second definitive answer confirms it
    assert [e.kind for e in result.events] == [K.DELETED]
    record = store.get_tag(f"{registry.host}/{repo}", "0.15.0")
    assert record is not None and record.state is models.TagState.DELETED
    deleted_at = result.events[0].at
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: {db_url}\nwatches: [{{repository: '{registry.host}/{repo}'}}]\n")
    ref = f"{registry.host}/{repo}:0.15.0"

    text = run("guard", ref, "-c", str(cfg))
    assert text.returncode == 1, (text.stdout, text.stderr)
    assert f"first recorded {guard.when(record.first_seen)}" in text.stdout
    assert f"disappeared {guard.when(deleted_at)}" in text.stdout
    assert release.digest in text.stdout

    # several references: one document, the worst answer; a never-released version is 0
    unreleased = f"{registry.host}/{repo}:0.16.0"
    both = run("guard", ref, unreleased, "--json", "-c", str(cfg))
    assert both.returncode == 1, both.stderr
    doc = json.loads(both.stdout)
    assert doc["exit_code"] == 1
    deleted, fresh = doc["results"]
    assert deleted["outcome"] == "released" and deleted["exists"] is False
    assert deleted["recorded_digest"] == release.digest
    assert dt.datetime.fromisoformat(deleted["first_recorded"]) == record.first_seen
    assert dt.datetime.fromisoformat(deleted["deleted_at"]) == deleted_at
    assert (fresh["ref"], fresh["exit_code"], fresh["outcome"]) == (unreleased, 0, "absent")
    # without the config only the registry is asked: it does not know the tag any more
    assert run("guard", ref, cwd=tmp_path).returncode == 0


def test_guard_json_in_every_outcome(
    tmp_path: Path,
    registry: support_registry.RegistryServer,
    repo: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit 3 (registry unreachable; a database that cannot say) and exit 2 (usage) are one JSON
    document on stdout too, never a traceback."""
    monkeypatch.delenv("WATCHDOG_CONFIG", raising=False)
    nobody = f"127.0.0.1:{free_port()}"
    down = run("guard", f"{nobody}/a/b:1.0.0", f"{nobody}/a/b:1.0.1", "--json", cwd=tmp_path)
    assert down.returncode == 3, down.stderr
    doc = json.loads(down.stdout)
    assert doc["exit_code"] == 3
    assert [r["outcome"] for r in doc["results"]] == ["unsure", "unsure"]
    assert all(r["reasons"] for r in doc["results"])

    # a config whose database is not there: an absent tag may have been released and deleted
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database_url: sqlite:///{tmp_path / 'missing' / 'w.db'}\n")
    absent = f"{registry.host}/{repo}:1.0.0"
    code, doc = in_process(capsys, "guard", absent, "--json")
    assert code == 0 and doc["results"][0]["outcome"] == "absent"
    code, doc = in_process(capsys, "guard", absent, "-c", str(cfg), "--json")
    assert code == 3 and doc["exit_code"] == 3
    (verdict,) = doc["results"]
    assert verdict["outcome"] == "unsure" and "no database at" in verdict["reasons"][0]

    for argv in (("guard", "not a ref", "--json"), ("guard", "--json"), ("guard", "--json", "-x")):
        code, doc = in_process(capsys, *argv)
        assert code == 2, argv
        assert doc["exit_code"] == 2 and doc["error"] and doc["results"] == [], argv
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("interval: soon\n")
    code, doc = in_process(capsys, "guard", absent, "-c", str(bad_config), "--json")
    assert code == 2 and doc["exit_code"] == 2 and "interval" in doc["error"]


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """``tag-watchdog ARGV`` in this process (the point is the document, not the process):
    its exit code and the one JSON document on stdout."""
    try:
        code = watchdog_cli.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, json.loads(out.out)
