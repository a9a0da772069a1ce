"""``on_move: restore``: put back every tag that moved, within loop protection.

A check persists its ``moved`` events first (marked ``restoring``: the promise the alert makes),
then ``AutoRestorer.run`` restores each through ``restore.Restorer``. A restore cut short by a
crash leaves a drifted tag whose last event is that ``moved``: the next check finds it
(``unfinished``) and finishes it. A tag restored ``restore.max_per_tag`` times within
``restore.window`` is not restored again: one loud ``restore_stopped`` event per window says
"something keeps pushing this tag", and a person chooses (Restore or Accept).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

from watchdog import config, metrics, models, restore
from watchdog.registry import client as registry_client
from watchdog.store import repo as store_repo

# the check's logger: these lines are part of the check's log, and pipelines filter on it
log = logging.getLogger("watchdog.service")

REASON = "something keeps pushing this tag"


async def unfinished(
    store: store_repo.Store,
    watch: config.WatchSettings,
    records: Mapping[str, models.TagRecord],
) -> dict[str, models.Event]:
    """The ``moved`` events of ``watch`` that promised a restore and have no outcome yet (the
    daemon died between the ``moved`` commit and the outcome's), by tag. Empty for an
    ``on_move: alert`` watch, and without a query when no tag is drifted."""
    if watch.on_move != "restore" or not any(
        r.state is models.TagState.DRIFTED for r in records.values()
    ):
        return {}
    last = await asyncio.to_thread(store.last_events_of_drifted, watch.repository.name)
    return {
        t: e
        for t, e in last.items()
        if e.kind is models.EventKind.MOVED and e.detail.get("restoring") is True
    }


def finishes_restore(obs: models.Observation, change: models.Change) -> bool:
    """For a tag whose restore was promised and not done: True when this observation leaves it
    to the restore (the tag still answers the moved digest, or the recorded one again), False
    when something else happened (moved again, gone, not answering)."""
    if obs.kind is not models.ObservationKind.PRESENT:
        return False
    return change.event is None or change.event.kind is models.EventKind.REVERTED


class AutoRestorer:
    """Restores moved tags for the checks, counting ``restores_total``. Safe to share."""

    def __init__(
        self,
        limits: config.RestoreSettings,
        store: store_repo.Store,
        registry_for: Callable[[str], registry_client.RegistryClient],
        metrics_: metrics.Metrics,
        *,
        clock: Callable[[], dt.datetime],
    ) -> None:
        """``registry_for`` gives the client of a registry host."""
        self.limits = limits
        self.store = store
        self.registry_for = registry_for
        self.metrics = metrics_
        self.clock = clock

    async def run(
        self,
        watch: config.WatchSettings,
        events: Sequence[models.Event],
        resume: Sequence[models.Event] = (),
    ) -> list[tuple[models.Change, models.Event]]:
        """Put back every tag that just moved (the ``moved`` among ``events``), within loop
        protection.

        Runs after the check's ``moved`` events are persisted; ``resume`` are earlier ``moved``
        events whose restore never wrote an outcome (a crash), finished the same way (the PUT
        of the same bytes again is harmless). A tag restored ``max_per_tag`` times within the
        ``window`` before it moved is not restored again: one ``restore_stopped`` event (the loud
        "something keeps pushing this tag") is written instead, once per window. Returns the
        changes (a restored record) and events written, for the result and metrics.
        """
        ref = watch.repository
        out: list[tuple[models.Change, models.Event]] = []
        limits = self.limits
        restorer = restore.Restorer(
            self.store, self.registry_for(ref.host), clock=self.clock, registries=self.registry_for
        )
        todo = [(e, False) for e in events if e.kind is models.EventKind.MOVED]
        for moved, resumed in [*todo, *((e, True) for e in resume)]:
            tag_ref = ref.with_tag(moved.tag)
            # the window before the move: a resumed restore is judged as it was when it moved
            since = moved.at - dt.timedelta(seconds=limits.window)
            done = await asyncio.to_thread(
                self.store.count_events, ref.name, moved.tag, [models.EventKind.RESTORED], since
            )
            if done >= limits.max_per_tag:
                recorded = moved.detail.get("recorded_digest")
                stopped = await self._stop(
                    tag_ref, done, since, recorded, moved.new_digest, quiet=resumed
                )
                if stopped is not None:
                    out.append((models.Change(ref.name, moved.tag, None, stopped), stopped))
                continue
            if resumed:
                log.warning("restore_resumed ref=%s digest=%s", tag_ref, moved.new_digest)
            outcome = await restorer.run(tag_ref)
            result = "restored" if outcome.restored else "failed"
            self.metrics.restores.labels(repository=ref.name, result=result).inc()
            record = None
            if outcome.restored:
                record = await asyncio.to_thread(self.store.get_tag, ref.name, moved.tag)
            out.append((models.Change(ref.name, moved.tag, record, outcome.event), outcome.event))
        return out

    async def _stop(
        self,
        tag_ref: models.ImageRef,
        done: int,
        since: dt.datetime,
        recorded: object,
        current: str | None,
        *,
        quiet: bool = False,
    ) -> models.Event | None:
        """Write the one ``restore_stopped`` event of this window (None when already written;
        ``quiet``: then without the log line, for a move judged again at every check). Its old
        digest is the record (what Restore puts back), its new one what the tag answers now (what
        Accept would record)."""
        assert tag_ref.tag is not None
        already = await asyncio.to_thread(
            self.store.count_events,
            tag_ref.name,
            tag_ref.tag,
            [models.EventKind.RESTORE_STOPPED],
            since,
        )
        if already and quiet:
            return None
        log.error("restore_stopped ref=%s reason=%r", tag_ref, REASON)
        if already:
            return None
        now = self.clock()
        event = models.Event(
            tag_ref.name,
            tag_ref.tag,
            models.EventKind.RESTORE_STOPPED,
            now,
            old_digest=recorded if isinstance(recorded, str) else None,
            new_digest=current,
            detail={
                "reason": REASON,
                "recorded_digest": recorded,
                "restores": done,
                "max_per_tag": self.limits.max_per_tag,
                "window_seconds": self.limits.window,
                "loud": True,
            },
            actor=restore.ACTOR_AUTO,
        )
        change = models.Change(tag_ref.name, tag_ref.tag, None, event)
        (saved,) = await asyncio.to_thread(self.store.apply_changes, tag_ref.name, now, [change])
        return saved
