"""Table tests for the pure detection rules (DESIGN section 4)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from watchdog import detect, models

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
REPO = "ghcr.io/deephaven/server"
K = models.EventKind
S = models.TagState
Obs = models.Observation
INDEX = "application/vnd.oci.image.index.v1+json"


def rec(
    state: S = S.OK, current: str | None = A, missing: int = 0, recorded: str = A
) -> models.TagRecord:
    return models.TagRecord(
        repository=REPO,
        tag="0.15.0",
        recorded_digest=recorded,
        current_digest=current,
        media_type=INDEX,
        state=state,
        first_seen=T0,
        last_checked=T0,
        last_changed=T0,
        missing_count=missing,
    )


def classify(previous: models.TagRecord | None, obs: models.Observation) -> models.Change:
    return detect.classify(previous, obs, NOW, repository=REPO, tag="0.15.0")


# (name, previous record, observation, expected event kind, expected state, expected current,
#  expected missing_count, expect a record write)
CASES = [
    ("first sight records a baseline", None, Obs.present(A, INDEX), K.FIRST_SEEN, S.OK, A, 0, True),
    ("unknown tag absent: nothing", None, Obs.absent(), None, None, None, None, False),
    ("unknown tag error: nothing", None, Obs.failed("timeout"), None, None, None, None, False),
    ("unchanged: no write at all", rec(), Obs.present(A, INDEX), None, None, None, None, False),
    ("moved", rec(), Obs.present(B, INDEX, ("linux/amd64",)), K.MOVED, S.DRIFTED, B, 0, True),
    (
        "drifted, same foreign digest: no second event",
        rec(S.DRIFTED, B),
        Obs.present(B, INDEX),
        None,
        None,
        None,
        None,
        False,
    ),
    (
        "drifted, moved again",
        rec(S.DRIFTED, B),
        Obs.present(C, INDEX),
        K.MOVED,
        S.DRIFTED,
        C,
        0,
        True,
    ),
    (
        "drifted, back at the record",
        rec(S.DRIFTED, B),
        Obs.present(A, INDEX),
        K.REVERTED,
        S.OK,
        A,
        0,
        True,
    ),
    ("first absence only counts", rec(), Obs.absent(), None, S.OK, A, 1, True),
    (
        "second absence confirms deletion",
        rec(missing=1),
        Obs.absent(),
        K.DELETED,
        S.DELETED,
        None,
        2,
        True,
    ),
    (
        "deleted stays deleted quietly",
        rec(S.DELETED, None, 2),
        Obs.absent(),
        None,
        None,
        None,
        None,
        False,
    ),
    (
        "deleted reappears with the record",
        rec(S.DELETED, None, 2),
        Obs.present(A, INDEX),
        K.REAPPEARED,
        S.OK,
        A,
        0,
        True,
    ),
    (
        "deleted reappears with another digest",
        rec(S.DELETED, None, 2),
        Obs.present(B, INDEX),
        K.REAPPEARED,
        S.DRIFTED,
        B,
        0,
        True,
    ),
    (
        "pending absence cleared by presence",
        rec(missing=1),
        Obs.present(A, INDEX),
        None,
        S.OK,
        A,
        0,
        True,
    ),
    ("error never changes an ok tag", rec(), Obs.failed("HTTP 500"), None, None, None, None, False),
    (
        "error never changes a pending absence",
        rec(missing=1),
        Obs.failed("HTTP 429"),
        None,
        None,
        None,
        None,
        False,
    ),
    (
        "error never changes a drifted tag",
        rec(S.DRIFTED, B),
        Obs.failed("401"),
        None,
        None,
        None,
        None,
        False,
    ),
]


@pytest.mark.parametrize(
    ("previous", "obs", "kind", "state", "current", "missing", "writes"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_classify(
    previous: models.TagRecord | None,
    obs: models.Observation,
    kind: K | None,
    state: S | None,
    current: str | None,
    missing: int | None,
    writes: bool,
) -> None:
    change = classify(previous, obs)
    assert (change.event.kind if change.event else None) is kind
    assert (change.record is not None) is writes
    if change.record is not None:
        assert change.record.state is state
        assert change.record.current_digest == current
        assert change.record.missing_count == missing
        assert change.record.last_checked == NOW
        # the trusted digest never changes by detection alone
        expected_recorded = A if previous is not None else obs.digest
        assert change.record.recorded_digest == expected_recorded


def test_moved_event_carries_both_digests_and_platforms() -> None:
    change = classify(rec(), Obs.present(B, INDEX, ("linux/arm64",)))
    assert change.event is not None
    assert (change.event.old_digest, change.event.new_digest) == (A, B)
    assert change.event.detail["changed_platforms"] == ["linux/arm64"]
    assert change.event.detail["recorded_digest"] == A
    assert change.record is not None and change.record.last_changed == NOW


def test_moved_again_reports_the_previous_current_digest_and_keeps_the_record() -> None:
    change = classify(rec(S.DRIFTED, B), Obs.present(C, INDEX))
    assert change.event is not None and change.record is not None
    assert (change.event.old_digest, change.event.new_digest) == (B, C)
    assert change.record.recorded_digest == A


def test_deleted_event_names_the_last_digest() -> None:
    change = classify(rec(S.DRIFTED, B, missing=1), Obs.absent())
    assert change.event is not None and change.event.kind is K.DELETED
    assert change.event.old_digest == B
    assert change.event.detail["recorded_digest"] == A


def test_deletion_confirmations_are_policy() -> None:
    policy = detect.Policy(deletion_confirmations=3)
    second = detect.classify(
        rec(missing=1), Obs.absent(), NOW, repository=REPO, tag="0.15.0", policy=policy
    )
    assert second.event is None and second.record is not None and second.record.missing_count == 2
    third = detect.classify(
        second.record, Obs.absent(), NOW, repository=REPO, tag="0.15.0", policy=policy
    )
    assert third.event is not None and third.event.kind is K.DELETED


def test_unchanged_first_seen_keeps_its_times() -> None:
    first = classify(None, Obs.present(A, INDEX))
    assert first.record is not None
    assert first.record.first_seen == first.record.last_changed == NOW
    later = dataclasses.replace(first.record)
    assert classify(later, Obs.present(A, INDEX)).record is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            {"linux/amd64": A, "linux/arm64": B},
            {"linux/amd64": A, "linux/arm64": C},
            ("linux/arm64",),
        ),
        ({"linux/amd64": A}, {"linux/amd64": A, "linux/arm64": B}, ("linux/arm64",)),
        ({"linux/amd64": A, "linux/arm64": B}, {"linux/amd64": A}, ("linux/arm64",)),
        ({"linux/amd64": A}, {"linux/amd64": A}, ()),
        ({}, {}, ()),
        (
            {"linux/arm64": A, "linux/amd64": B},
            {"linux/arm64": C, "linux/amd64": C},
            ("linux/amd64", "linux/arm64"),
        ),
    ],
)
def test_changed_platforms(
    old: dict[str, str], new: dict[str, str], expected: tuple[str, ...]
) -> None:
    assert detect.changed_platforms(old, new) == expected
