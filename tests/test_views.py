"""What ``scan`` shows of a check result (views.check_lines / check_json): drift known from the
record only is marked as not re-checked."""

from __future__ import annotations

import datetime as dt

from watchdog import models, service, views

AT = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64


def record(tag: str, state: models.TagState) -> models.TagRecord:
    return models.TagRecord("ghcr.io/a/b", tag, OLD, NEW, None, state, AT, AT, AT)


def test_drift_from_the_record_is_shown_during_an_outage_marked_not_rechecked() -> None:
    result = service.CheckResult(
        "ghcr.io/a/b",
        "ghcr.io",
        error="registry ghcr.io: cannot connect",
        drifted=[record("1.0.0", models.TagState.DRIFTED)],
        not_rechecked={"1.0.0"},
    )
    assert views.check_lines(result) == [
        "ghcr.io/a/b: could not check: registry ghcr.io: cannot connect",
        f"  DRIFT     ghcr.io/a/b:1.0.0 is drifted (recorded {OLD}) "
        "[from the record, not re-checked]",
    ]
    assert [d["rechecked"] for d in views.check_json(result)["drifted"]] == [False]
    assert not views.confirmed_drift(result)  # scan's exit code 1 wants drift seen now


def test_drift_seen_now_is_plain_and_confirmed() -> None:
    result = service.CheckResult(
        "ghcr.io/a/b",
        "ghcr.io",
        tags_checked=2,
        tag_errors={"2.0.0": "HEAD answered 503"},
        drifted=[
            record("1.0.0", models.TagState.DRIFTED),
            record("2.0.0", models.TagState.DELETED),
        ],
        not_rechecked={"2.0.0"},
    )
    lines = views.check_lines(result)
    assert f"  DRIFT     ghcr.io/a/b:1.0.0 is drifted (recorded {OLD})" in lines
    assert (
        f"  DRIFT     ghcr.io/a/b:2.0.0 is deleted (recorded {OLD}) [from the record, not re-checked]"
        in lines
    )
    assert [d["rechecked"] for d in views.check_json(result)["drifted"]] == [True, False]
    assert views.confirmed_drift(result)
