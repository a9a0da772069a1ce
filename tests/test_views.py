"""What ``scan`` shows of a check result (views.check_lines / check_json): drift known from the
record only is marked as not re-checked."""

from __future__ import annotations

import dataclasses
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


# --- incidents (issue 16) --------------------------------------------------------------------

K = models.EventKind
THIRD = "sha256:" + "c" * 64


def incident_of(*events: models.Event) -> models.Incident:
    return models.Incident(
        7,
        "ghcr.io/a",
        opened_at=AT,
        last_change_at=AT + dt.timedelta(seconds=30),
        closes_at=AT + dt.timedelta(seconds=150),
        events=tuple(dataclasses.replace(e, id=i, incident_id=7) for i, e in enumerate(events, 1)),
    )


def moved(tag: str, old: str, new: str, *, secs: int = 0, **detail: object) -> models.Event:
    at = AT + dt.timedelta(seconds=secs)
    return models.Event("ghcr.io/a/b", tag, K.MOVED, at, old, new, detail=dict(detail))


BURST = incident_of(
    moved("1.0.0", OLD, NEW, changed_platforms=["linux/amd64"], pushed_by={"actor": "ci-bot"}),
    moved("2.0.0", OLD, NEW, secs=1, changed_platforms=["linux/arm64"]),
    models.Event("ghcr.io/a/c", "3.0.0", K.DELETED, AT + dt.timedelta(seconds=2), OLD, None),
    # 1.0.0 moves again, then is put back by hand: old from its first move, new from the last
    moved("1.0.0", NEW, THIRD, secs=3, changed_platforms=["linux/arm64"]),
    models.Event(
        "ghcr.io/a/b",
        "1.0.0",
        K.RESTORED,
        AT + dt.timedelta(seconds=40),
        THIRD,
        OLD,
        actor="cli:ann",
    ),
)


def test_an_incident_as_json_counts_each_tag_once_and_says_where_it_stands() -> None:
    doc = views.incident_json(BURST, AT + dt.timedelta(seconds=60))
    assert (doc["id"], doc["group_key"], doc["registry"], doc["open"]) == (
        7,
        "ghcr.io/a",
        "ghcr.io",
        True,
    )
    assert doc["opened_at"] == "2026-11-01T00:00:00Z"
    assert doc["closes_at"] == "2026-11-01T00:02:30Z"
    assert (doc["tag_count"], doc["counts"]) == (3, {"moved": 2, "deleted": 1})
    assert doc["pushed_by"] == ["ci-bot"]
    assert "events" not in doc
    first = doc["tags"][0]
    assert first == {
        "ref": "ghcr.io/a/b:1.0.0",
        "repository": "ghcr.io/a/b",
        "tag": "1.0.0",
        "change": "moved",
        "at": "2026-11-01T00:00:03Z",
        "old_digest": OLD,
        "new_digest": THIRD,
        "changed_platforms": ["linux/amd64", "linux/arm64"],
        "state": "restored",
        "actor": "cli:ann",
        "pushed_by": None,  # the latest change's: the second move was not attributed
    }
    assert [(t["ref"], t["state"]) for t in doc["tags"][1:]] == [
        ("ghcr.io/a/b:2.0.0", "moved"),
        ("ghcr.io/a/c:3.0.0", "deleted"),
    ]
    assert doc["tags"][2]["new_digest"] is None
    closed = views.incident_json(BURST, AT + dt.timedelta(seconds=150), events=True)
    assert closed["open"] is False
    assert [e["incident"] for e in closed["events"]] == [7] * 5


def test_incidents_as_text_a_head_and_each_tag_where_it_stands() -> None:
    later = AT + dt.timedelta(hours=1)
    lonely = dataclasses.replace(
        incident_of(models.Event("ghcr.io/a/b", "9.0.0", K.BROKEN, AT, detail={})), id=8
    )
    assert views.incidents_text([lonely, BURST], later) == [
        "incident 8  ghcr.io/a  opened 2026-11-01 00:00:00Z, closed 2026-11-01 00:02:30Z",
        "  1 tag: 1 broken; pushed by unknown",
        "    ghcr.io/a/b:9.0.0  broken",
        "",
        "incident 7  ghcr.io/a  opened 2026-11-01 00:00:00Z, closed 2026-11-01 00:02:30Z",
        "  3 tags: 2 moved, 1 deleted; pushed by ci-bot",
        "    ghcr.io/a/b:1.0.0  restored",
        "    ghcr.io/a/b:2.0.0  moved",
        "    ghcr.io/a/c:3.0.0  deleted",
    ]
    lines = views.incident_text(BURST, AT)
    assert lines[0].endswith("open until 2026-11-01 00:02:30Z")
    assert lines[3].split() == [
        "TAG",
        "CHANGE",
        "OLD",
        "NEW",
        "PLATFORMS",
        "NOW",
        "BY",
        "PUSHED",
        "BY",
    ]
    assert lines[4].split() == [
        "ghcr.io/a/b:1.0.0",
        "moved",
        models.short_digest(OLD),
        models.short_digest(THIRD),
        "linux/amd64,",
        "linux/arm64",
        "restored",
        "cli:ann",
        "unknown",
    ]
    assert lines[6].split()[:4] == ["ghcr.io/a/c:3.0.0", "deleted", models.short_digest(OLD), "-"]


def test_text_from_outside_is_escaped_in_the_incident_table() -> None:
    evil = incident_of(moved("1.0.0", OLD, NEW, pushed_by={"actor": "bot\x1b[2J"}))
    text = "\n".join(views.incident_text(evil, AT))
    assert "\x1b" not in text and "bot\\x1b[2J" in text
