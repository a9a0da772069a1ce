"""Notices about registries the checks cannot reach: ONE when a registry has been unreachable for
``slack.unreachable_after``, ONE when a check reaches it again, nothing in between.

Outages are kept in memory, per registry host: a restart starts counting again. The notices go
to a ``NoticeQueue`` (watchdog.store.repo.Store), which delivers them through the alert outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from watchdog import errors

# the check's logger: these lines are part of the check's log, and pipelines filter on it
log = logging.getLogger("watchdog.service")


class NoticeQueue(Protocol):
    """Where notices about the watchdog itself go (called in a thread)."""

    def enqueue_notice(self, notice: Mapping[str, Any], now: dt.datetime) -> None: ...


@dataclasses.dataclass
class Outage:
    """A registry no check has reached since ``since``; ``alerted`` once the alert is queued."""

    since: dt.datetime
    alerted: bool = False


class Outages:
    """The outages under way, by registry host, and the notices they are owed."""

    def __init__(
        self,
        queue: NoticeQueue,
        *,
        unreachable_after: float,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.queue = queue
        self.unreachable_after = unreachable_after
        self.clock = clock
        self.by_host: dict[str, Outage] = {}

    async def note(self, host: str, error: str | None, *, answered: bool) -> None:
        """Take in how a check of ``host`` went (``error``: it could not reach the registry;
        ``answered``: it reached it), and queue the notice that is due, if any. A notice that
        cannot be queued is logged; an unreachable one is then tried again on the next failure.
        Never raises for store failures."""
        now = self.clock()
        notice = self.notice(host, error, answered=answered, now=now)
        if notice is None:
            return
        log.warning("%s registry=%s", notice["kind"], host)
        try:
            await asyncio.to_thread(self.queue.enqueue_notice, notice, now)
        except errors.StoreError as exc:
            log.warning("notice_not_queued registry=%s error=%r", host, str(exc))
            outage = self.by_host.get(host)
            if outage is not None and notice["kind"] == "registry_unreachable":
                outage.alerted = False  # try again on the next failed check

    def notice(
        self, host: str, error: str | None, *, answered: bool, now: dt.datetime
    ) -> dict[str, str] | None:
        """Update the outage of ``host`` at ``now`` and return the notice now due, or None.

        A check that neither failed to reach the registry nor reached it (``error`` None,
        ``answered`` False: a database failure) changes nothing.
        """
        outage = self.by_host.get(host)
        if error is not None:
            if outage is None:
                outage = self.by_host[host] = Outage(since=now)
            down_for = (now - outage.since).total_seconds()
            if outage.alerted or down_for < self.unreachable_after:
                return None
            outage.alerted = True
            return {
                "kind": "registry_unreachable",
                "registry": host,
                "since": outage.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
                "error": errors.truncate(error, 300),
            }
        if not answered or outage is None:
            return None
        del self.by_host[host]
        if not outage.alerted:
            return None
        minutes = (now - outage.since).total_seconds() / 60
        return {
            "kind": "registry_recovered",
            "registry": host,
            "down_for": f"{minutes:.0f} min" if minutes >= 1 else "under a minute",
        }
