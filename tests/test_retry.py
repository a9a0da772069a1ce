"""The one backoff policy and the one reading of Retry-After (pure: table tests)."""

from __future__ import annotations

import email.utils

import pytest

from watchdog import retry

NOW = 1_700_000_000.0
DAY = retry.MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # delta-seconds
        ("0", 0.0),
        ("5", 5.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("+7", 7.0),
        (" 120 ", 120.0),
        # a negative wait is no wait
        ("-3", 0.0),
        ("-0.5", 0.0),
        # huge: capped, however many digits (float() of 400 digits is inf)
        ("86400", DAY),
        ("86401", DAY),
        ("99999999999999999999", DAY),
        ("9" * 400, DAY),
        # HTTP dates, against the given clock
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 0.0),
        (email.utils.formatdate(NOW + 10 * 365 * 86400, usegmt=True), DAY),
        ("Fri, 31 Dec 9999 23:59:59 GMT", DAY),
        # no usable answer: the caller backs off instead
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("nan", None),
        ("NaN", None),
        ("1e3", None),
        ("1_000", None),
        ("0x10", None),
        ("5 s", None),
        ("soon", None),
        ("Thu, 32 Jan 2025 00:00:00 GMT", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert retry.parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_reads_dates_against_the_system_clock_by_default() -> None:
    assert retry.parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT") == 0.0
    ahead = retry.parse_retry_after(email.utils.formatdate(usegmt=True))
    assert ahead is not None and 0.0 <= ahead <= 1.0


POLICY = retry.Policy(attempts=4, base=0.5, factor=3.0, cap=4.0, max_retry_after=10.0)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, None, 0.5),
        (2, None, 1.5),
        (3, None, 4.0),  # 4.5, capped
        (9, None, 4.0),
        (0, None, 0.5),  # "before the first" is the first
        (1, 7.0, 7.0),  # the other side said how long: that wins over the backoff
        (3, 0.0, 0.0),
        (1, -2.0, 0.0),
        (1, 60.0, 10.0),  # at most max_retry_after
    ],
)
def test_delay(attempt: int, retry_after: float | None, expected: float) -> None:
    assert POLICY.delay(attempt, retry_after) == expected


def test_backoff_is_the_delay_without_retry_after() -> None:
    assert [POLICY.backoff(n) for n in range(1, 6)] == [0.5, 1.5, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(("tries", "exhausted"), [(0, False), (3, False), (4, True), (5, True)])
def test_attempts_count_every_try(tries: int, exhausted: bool) -> None:
    assert POLICY.exhausted(tries) is exhausted


@pytest.mark.parametrize(
    ("retry_after", "honoured"), [(None, True), (0.0, True), (10.0, True), (10.5, False)]
)
def test_honours_a_retry_after_up_to_the_limit(retry_after: float | None, honoured: bool) -> None:
    assert POLICY.honours(retry_after) is honoured
