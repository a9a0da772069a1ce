"""When to try again: one backoff policy (as data) and one reading of ``Retry-After``.

Pure: no I/O, no HTTP library. The registry client (in-line retries of one request) and the alert
outbox (durable retries of one delivery) both use it, each with its own numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import re
import time

# The longest wait a ``Retry-After`` can ask for: no caller waits longer than this (the outbox
# stops at an hour, the registry client at a few seconds), and datetime arithmetic on the answer
# stays in range however many digits a server sends.
MAX_RETRY_AFTER = 86_400.0

# delay-seconds is digits (RFC 9110 section 10.2.3); a sign and a fraction are tolerated because
# servers send them. Not float(): it would read "inf", "nan", "1e9" and "1_000" as numbers.
_SECONDS_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """Backoff as data: ``attempts`` tries in all; after failed try ``n`` wait
    ``base * factor**(n-1)`` seconds, at most ``cap``, unless the other side said how long
    (``Retry-After``), which wins up to ``max_retry_after``.

    What to do with a ``Retry-After`` longer than ``max_retry_after`` is the caller's choice: the
    outbox waits ``max_retry_after``; the registry client gives up on the request rather than hold
    a scheduler slot for minutes (:meth:`honours` tells them apart).
    """

    attempts: int
    base: float
    factor: float
    cap: float
    max_retry_after: float

    def backoff(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (1 = the first) when nobody said how long."""
        return min(self.cap, self.base * self.factor ** max(0, attempt - 1))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed try ``attempt``: ``retry_after`` (within 0..``max_retry_after``)
        when given, else :meth:`backoff`."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self.backoff(attempt)

    def exhausted(self, tries: int) -> bool:
        """True when ``tries`` tries were made and no other one is due."""
        return tries >= self.attempts

    def honours(self, retry_after: float | None) -> bool:
        """True when a wait of ``retry_after`` (None: none asked for) is within ``max_retry_after``."""
        return retry_after is None or retry_after <= self.max_retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None.

    Always a finite number from 0 to MAX_RETRY_AFTER, or None for "no usable answer" (the caller
    then falls back to its backoff):

    * absent, blank, garbage, ``inf``, ``nan``, ``1e3`` (not delta-seconds) -> None;
    * a negative number or a date in the past -> 0.0;
    * more than MAX_RETRY_AFTER (a huge number, a date years ahead) -> MAX_RETRY_AFTER.

    ``now`` (seconds since the epoch) is the clock for dates; default the system clock.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS_RE.match(text):
        return _bounded(float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = time.time() if now is None else now
    return _bounded(when.timestamp() - current)


def _bounded(seconds: float) -> float:
    # float() of a few hundred digits is inf: still "a very long time", not garbage.
    return min(MAX_RETRY_AFTER, max(0.0, seconds))
