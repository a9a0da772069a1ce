"""What `restore`/`accept` of several tags print (views.outcomes_text / outcomes_json): one
line per tag, a count, the worst exit code; one REF keeps the document it always had."""

from __future__ import annotations

import datetime as dt

from watchdog import actions, models, views

AT = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64
A, B, C = (models.ImageRef.parse(f"ghcr.io/acme/app:{t}") for t in ("1.0.0", "2.0.0", "3.0.0"))


def restored(ref: models.ImageRef) -> actions.TagResult:
    assert ref.tag is not None
    event = models.Event(ref.name, ref.tag, models.EventKind.RESTORED, AT, NEW, OLD, actor="cli")
    return actions.TagResult(ref, views.RESTORED, event=event)


def test_several_tags_one_line_each_a_count_and_the_worst_exit_code() -> None:
    results = [
        restored(A),
        actions.TagResult(B, views.REFUSED, reason="the record of it changed since"),
        actions.TagResult(C, views.COULD_NOT_COMPLETE, reason="could not complete: timeout"),
    ]
    out, err = views.outcomes_text(results, several=True, dry_run=False)
    assert out == [
        f"restored {A.name}:1.0.0 to {OLD}",
        f"{B.name}:2.0.0: the record of it changed since",
        f"{C.name}:3.0.0: could not complete: timeout",
        "3 tags: 1 restored, 1 refused, 1 could not complete",
    ]
    assert err == ["not every tag went well (see above)"]
    assert views.worst_exit_code(results) == 3
    assert views.worst_exit_code(results[:2]) == 2 and views.worst_exit_code(results[:1]) == 0
    doc = views.outcomes_json(results, several=True, dry_run=False)
    assert (doc["exit_code"], doc["dry_run"]) == (3, False)
    assert [(r["ref"], r["outcome"], r["exit_code"]) for r in doc["results"]] == [
        (f"{A.name}:1.0.0", "restored", 0),
        (f"{B.name}:2.0.0", "refused", 2),
        (f"{C.name}:3.0.0", "could_not_complete", 3),
    ]


def test_one_ref_keeps_its_own_document_and_a_failure_goes_to_stderr() -> None:
    doc = views.outcomes_json([restored(A)], several=False, dry_run=False)
    assert doc["exit_code"] == 0 and doc["event"]["kind"] == "restored" and "results" not in doc
    accepted = views.outcomes_json([restored(A)], several=True, dry_run=None)
    assert "dry_run" not in accepted and len(accepted["results"]) == 1  # accept: no dry run
    assert "plan" not in accepted["results"][0] and "plan" in doc
    failed = actions.TagResult(A, views.COULD_NOT_COMPLETE, reason="could not complete: x")
    assert views.outcomes_text([failed], several=False, dry_run=False) == (
        [],
        [f"{A.name}:1.0.0: could not complete: x"],
    )
    assert views.outcomes_text([restored(A)], several=False, dry_run=False) == (
        [f"restored {A.name}:1.0.0 to {OLD}"],
        [],
    )
